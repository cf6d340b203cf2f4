#!/bin/bash
# The device call behind bench/results/grpo_rollouts_study_4_ab18_*.json (#18: the study's recipe, 4 rollouts/step =
# 1 prompt x 4 generations, 256-token completions, paper recipe, LoRA q/v, Qwen2.5-VL-3B dims, random weights):
# the fast engine of the working tree (new) against TRL's defaults and the fast engine of c4862dc (base, before the
# eager token choice / GPU-side pixel assembly), each in a fresh process, one after another in ONE device call.
# Layout, made here before the call (.gl/ is ignored; carry .gl/h18 and .whl):
#   .gl/h18/base: `git archive c4862dc src bench pyproject.toml config workflow/schemas` + COMMIT
#   .gl/h18/new:  a copy of the working tree's src, bench, pyproject.toml, config, workflow/schemas + COMMIT
# Command (one `run`): bash bench/ab18_study_device.sh
# RUNS: tag:folder:setting:timed_steps:timeout:min_seconds_left; a run starts only if at least min_seconds_left remain
# of BUDGET (seconds since the script started). Outputs: $OUT/<tag>.json, $OUT/logs.txt, $OUT/env.txt.
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONFAULTHANDLER=1
BUDGET=${BUDGET:-540}
RUNS=${RUNS:-"new:new:fast_step:12:150:0 trl_default:new:trl_default:3:170:0 base:base:fast_step:12:150:0 new2:new:fast_step:12:130:110 base2:base:fast_step:12:130:110"}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
E=$OUT/env.txt
{ cat .gl/h18/base/COMMIT .gl/h18/new/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  PYTHONPATH=/tmp/site python3 -c 'import torch,transformers,trl,peft;print(torch.__version__,transformers.__version__,trl.__version__,peft.__version__)'
  echo "install_s $(el)"; } > $E 2>&1
R=$PWD
for spec in $RUNS; do
  IFS=: read tag dir setting steps lim need <<< "$spec"
  left=$(( BUDGET - $(el) ))
  if (( left < need || left < 30 )); then echo "$tag skipped (left ${left}s)" >> $E; continue; fi
  (( lim > left )) && lim=$left
  t=$(date +%s)
  (cd $R/.gl/h18/$dir && PYTHONPATH=$PWD/src:/tmp/site timeout -k 5 $lim python3 bench/grpo_rollouts.py grpo \
    --setting $setting --rollouts 4 --micro 16 --recipe paper --lora qv --steps $steps --warmup 1 \
    --out $OUT/$tag.json > /tmp/$tag.log 2>&1)
  rc=$?
  { echo "===== $tag rc=$rc"; tail -c 6000 /tmp/$tag.log; } >> $OUT/logs.txt
  echo "$tag rc=$rc s=$(( $(date +%s) - t )) end_at=$(el)" >> $E
  python3 - $OUT/$tag.json <<'PY' >> $E 2>&1
import json, statistics, sys
d = json.load(open(sys.argv[1])); s = d["split_mean_s"]; ts = d["step_times_s"][d["warmup_steps"]:]
print(" rps=%.3f step=%.3f median_step=%.3f steady_rps(median)=%.3f" % (
    d["rollouts_per_s"], d["step_s"], statistics.median(ts), d["rollouts_per_step"] / statistics.median(ts)),
    {k: round(v, 3) for k, v in s.items() if isinstance(v, float)}, "peak_GB=%.1f" % d["peak_mem_GB"],
    d.get("decode_vs_floor"))
PY
done
cat $E
