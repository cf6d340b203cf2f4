#!/bin/bash
# Sourced by the device scripts (bench/*_device.sh): the clock, the environment, the wheel install and the versions
# header that every env.txt starts with.
#   source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
#   install_wheels .whl/*.whl || exit 3       # pip --target /tmp/site, offline, no dependencies resolved
#   device_header [module ...] > $E 2>&1      # GPU, torch/transformers/trl/peft (+ modules) versions, install_s
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONFAULTHANDLER=1

install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"
}

device_header() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} python3 -c \
    'import importlib, sys; print(*(importlib.import_module(m).__version__ for m in sys.argv[1:]))' \
    torch transformers trl peft "$@"
  echo "install_s $(el)"
}
