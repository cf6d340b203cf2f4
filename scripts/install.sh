#!/usr/bin/env bash
# Install the pipeline and its pinned dependencies into the current Python (a venv or the system one).
#   bash scripts/install.sh            # pipeline + workflow tools
#   bash scripts/install.sh --test     # also the test tools and the system packages the tests need (root)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.13.0"   # CPU build; on a GPU machine install your CUDA build first
python3 -m pip install --quiet -e ".[workflow,test]"
if [[ "${1:-}" == "--test" ]]; then
  # A one-node SLURM for the cluster tests and Chromium for the report test (Debian packages).
  need=()
  for bin in sinfo slurmctld slurmd munged chromium; do command -v "$bin" >/dev/null || need+=("$bin"); done
  if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge chromium >/dev/null
  fi
fi
