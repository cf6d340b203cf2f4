#!/bin/bash
# The device call behind bench/results/gpucheck_*.json and grpo_rollouts_decode_paper_qv_*.json (#18's decode
# step; one 10-minute call of the device tool). From a folder holding this repository's tree (cwd or $1) and the
# wheel folder .whl (trl, peft, transformers, tokenizers, datasets, dill, multiprocess) at $WHL (default .whl):
#   [DL=<seconds for everything>] bash bench/decode18_device.sh [repo]
# 1. bench/grpo_rollouts.py gpucheck: greedy tokens of the compiled, CUDA-graphed engine (whole-step and per-layer
#    compile) against transformers' generate for tiny Qwen2.5-VL and SmolVLM models on the GPU, and SmolVLM-500M
#    dims with and without the engine's KV cache; 2. bench/grpo_rollouts.py all --plan decode (study recipe, 4
#    rollouts/step: whole-step compile, per-layer compile, TRL defaults; 64 rollouts/step; autotuned step) in the
#    time left. Outputs go to $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
install_wheels "${WHL:-.whl}"/*.whl || exit 3
cd "${1:-.}" || exit 4
export PYTHONPATH=$PWD/src:/tmp/site
E=$OUT/env.txt
{ cat COMMIT 2>/dev/null; device_header; } > $E 2>&1
t=$(date +%s); timeout -k 5 "${GC:-150}" python3 bench/grpo_rollouts.py gpucheck --out $OUT/gpucheck.json > $OUT/gpucheck.log 2>&1
echo "gpucheck rc=$? s=$(( $(date +%s) - t )) end_at=$(el)" >> $E
LEFT=$(( ${DL:-540} - $(el) ))
python3 bench/grpo_rollouts.py all --plan decode --recipe paper --lora qv --micro 16 --budget $LEFT --out $OUT/grpo_decode.json > $OUT/all.log 2>&1
echo "all rc=$? end_at=$(el)" >> $E
