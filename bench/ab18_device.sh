#!/bin/bash
# The device call behind bench/results/grpo_rollouts_fast_step_64_ab18_*.json (#18: 64 rollouts/step, the old code
# against the new in one H100 call). Layout, made here before the call (.gl/ is ignored; carry .gl/h18 and .whl):
#   .gl/h18/base: `git archive <old commit> src bench pyproject.toml` + its COMMIT; .gl/h18/new: a copy of the working
#   tree's src, bench, pyproject.toml; both need workflow/schemas and config (the command copies them in);
#   .gl/h18/run.sh: this file. Command (one `run`, about 220 s on the device):
#   cp -r workflow/schemas .gl/h18/base/workflow/ ...; RUNS="base:base:140 new:new:140 \
#     new_lpb64:new:140:--logprob-batch,64 new_cudnn:new:120:--cudnn-attention" STEPS=3 bash .gl/h18/run.sh
# RUNS: tag:folder:timeout[:extra,args]; each run is bench/grpo_rollouts.py grpo --setting fast_step --rollouts 64
# --micro 16 --recipe paper --lora qv --steps $STEPS --warmup 1 in a fresh process; outputs go to $OUT/<tag>.json.
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONFAULTHANDLER=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
E=$OUT/env.txt
{ cat .gl/h18/base/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; PYTHONPATH=/tmp/site python3 -c 'import torch,transformers,trl,peft;print(torch.__version__,transformers.__version__,trl.__version__,peft.__version__)'; echo "install_s $(el)"; } > $E 2>&1
R=$PWD
run() { # tag dir timeout extra-args...
  local tag=$1 dir=$2 lim=$3; shift 3
  local t=$(date +%s)
  (cd $R/.gl/h18/$dir && PYTHONPATH=$PWD/src:/tmp/site timeout -k 5 $lim python3 bench/grpo_rollouts.py grpo --setting fast_step --rollouts 64 --micro 16 --recipe paper --lora qv "$@" --out $OUT/$tag.json > $OUT/$tag.log 2>&1)
  echo "$tag rc=$? s=$(( $(date +%s) - t )) end_at=$(el)" >> $E
  python3 - $OUT/$tag.json <<'PY' >> $E 2>&1
import json,sys
d=json.load(open(sys.argv[1])); s=d["split_mean_s"]
print(" rps=%.3f step=%.3f" % (d["rollouts_per_s"], d["step_s"]), {k: round(v,3) for k,v in s.items() if isinstance(v,float)}, "peak_GB=%.1f" % d["peak_mem_GB"], d.get("decode_vs_floor"))
PY
}
for spec in $RUNS; do
  IFS=: read tag dir lim extra <<< "$spec"
  run $tag $dir $lim --steps ${STEPS:-4} --warmup 1 ${extra//,/ }
done
cat $E
