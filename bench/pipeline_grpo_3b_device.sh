#!/bin/bash
# The device call behind bench/results/pipeline_grpo_3b_*.json (one 10-minute call of the device tool): from the
# folder holding the wheel folders .whl (trl, peft, transformers, tokenizers, datasets, dill, multiprocess) and
# .whl_sm (snakemake 9.27.1 and its dependencies), with this repository at $1:
#   [TF=1] [DL=<watchdog seconds>] bash <repo>/bench/pipeline_grpo_3b_device.sh <repo>
# TF=1 also runs the bf16 teacher-forced check (bench/grpo_rollouts.py tf). Outputs go to $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
install_wheels .whl/*.whl .whl_sm/*.whl || exit 3
PY=$(command -v python3); mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$PY" > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
cd "${1:-.}" || exit 4
export PYTHONPATH=$PWD/src:/tmp/site
E=$OUT/env.txt
{ echo "python3=$PY"; device_header snakemake; } > $E 2>&1
( t=$(date +%s); timeout -k 5 170 python bench/grpo_rollouts.py save-model --out /tmp/qwen3b > /tmp/save_model.log 2>&1; echo "save_model rc=$? s=$(( $(date +%s) - t )) end_at=$(el)" >> $E ) &
SAVE=$!
t=$(date +%s); [ -n "$TF" ] && timeout -k 5 170 python bench/grpo_rollouts.py tf --out $OUT/teacher_forced.json > $OUT/tf.log 2>&1; echo "tf rc=$? s=$(( $(date +%s) - t )) end_at=$(el)" >> $E
wait $SAVE; cp /tmp/save_model.log $OUT/ 2>/dev/null
DEADLINE=$(( T0 + ${DL:-520} ))
t=$(date +%s)
setsid python -m snakemake --cores 8 --configfile bench/pipeline_grpo_3b.yaml -- results/runs/vsr3b_grpo/grpo/adapter > /tmp/snakemake.log 2>&1 &
SPID=$!
while kill -0 $SPID 2>/dev/null; do
  sleep 3
  cp results/logs/grpo/vsr3b_grpo.log $OUT/grpo.log 2>/dev/null
  if [ $(date +%s) -ge $DEADLINE ]; then
    echo "watchdog: ABRT to process group $SPID at $(el)" >> $E
    nvidia-smi >> $E 2>&1
    kill -ABRT -- -$SPID; sleep 4; kill -KILL -- -$SPID; sleep 1; break
  fi
done
wait $SPID; echo "snakemake rc=$? s=$(( $(date +%s) - t )) end_at=$(el) cmd: python -m snakemake --cores 8 --configfile bench/pipeline_grpo_3b.yaml -- results/runs/vsr3b_grpo/grpo/adapter" >> $E
cp /tmp/snakemake.log $OUT/snakemake.log; cp results/logs/grpo/vsr3b_grpo.log $OUT/grpo.log 2>/dev/null
tar czf /tmp/results.tgz results/logs results/benchmarks results/runs/vsr3b_grpo/grpo/adapter/*.json .snakemake/log 2>/dev/null; cp /tmp/results.tgz $OUT/
echo "end $(el)" >> $E
cat $E; tail -4 $OUT/grpo.log
