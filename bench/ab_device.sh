#!/bin/bash
# One device call that times GRPO steps of several code trees / settings one after another, each in a fresh process
# (bench/grpo_rollouts.py grpo), so every ratio has a baseline from the same machine and the same call.
# Layout, made here before the call (.gl/ is ignored; carry .gl/h18 and .whl):
#   .gl/h18/<folder>: a tree with src, bench, pyproject.toml, config, workflow/schemas and a COMMIT file, e.g.
#     base: `git archive <commit> src bench pyproject.toml config workflow/schemas | tar -x -C .gl/h18/base`
#     new:  a copy of the working tree's same paths
#   .whl: the wheels the device lacks (trl, peft, transformers, tokenizers, datasets, dill, multiprocess)
# Command (one `run`):  [ROLLOUTS=4] [MICRO=16] [RECIPE=paper] [LORA=qv|all] [BUDGET=540] RUNS="..." bash bench/ab_device.sh
# RUNS: space-separated tag:folder:setting:steps:timeout:min_left[:extra,args]; a run starts only if at least
#   min_left of BUDGET seconds (counted from the script's start) remain; its timeout is cut to what remains.
#   setting: bench/grpo_rollouts.py's --setting (fast_step, trl_default, trl_tuned, ...); extra args are comma-joined.
# Examples: the study recipe (4 rollouts/step) against TRL's defaults:
#   RUNS="new:new:fast_step:12:150:0 trl:new:trl_default:3:170:0" LORA=all bash bench/ab_device.sh
# 64 rollouts/step, the old tree against the new:
#   ROLLOUTS=64 RUNS="base:base:fast_step:3:140:0 new:new:fast_step:3:140:0" bash bench/ab_device.sh
# Outputs: $OUT/<tag>.json, $OUT/logs.txt (each run's log tail), $OUT/env.txt (versions, per-run rates and splits).
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
BUDGET=${BUDGET:-540}
: "${RUNS:?set RUNS (see the header)}"
install_wheels .whl/*.whl || exit 3
E=$OUT/env.txt
{ for d in .gl/h18/*/; do echo "$d $(cat $d/COMMIT 2>/dev/null)"; done
  echo "rollouts/step ${ROLLOUTS:-4} micro ${MICRO:-16} recipe ${RECIPE:-paper} lora ${LORA:-qv}"
  device_header; } > $E 2>&1
R=$PWD
for spec in $RUNS; do
  IFS=: read -r tag dir setting steps lim need extra <<< "$spec"
  left=$(( BUDGET - $(el) ))
  if (( left < need || left < 30 )); then echo "$tag skipped (left ${left}s)" >> $E; continue; fi
  (( lim > left )) && lim=$left
  t=$(date +%s)
  # shellcheck disable=SC2086  # extra args: split on purpose
  (cd $R/.gl/h18/$dir && PYTHONPATH=$PWD/src:/tmp/site timeout -k 5 $lim python3 bench/grpo_rollouts.py grpo \
    --setting $setting --rollouts ${ROLLOUTS:-4} --micro ${MICRO:-16} --recipe ${RECIPE:-paper} --lora ${LORA:-qv} \
    --steps $steps --warmup 1 ${extra//,/ } --out $OUT/$tag.json > /tmp/$tag.log 2>&1)
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
