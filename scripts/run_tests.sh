#!/usr/bin/env bash
# Quick start, command 2: install (incl. SLURM for the cluster tests), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export HF_HUB_OFFLINE=1 GRPO_VQA_REQUIRE_SLURM=1 GRPO_VQA_REQUIRE_CHROMIUM=1
scripts/slurm/start_local_slurm.sh
trap 'scripts/slurm/stop_local_slurm.sh || true' EXIT
python3 -m ruff check .
python3 -m ruff format --check .
# Not in CI (the whole run must stay under 25 minutes): the checks on a full embedded-default run
# (`python3 -m pytest -m embedded`, ~10 min), the tiny end-to-end runs of the six family tables (`-m families`,
# ~10 min) and the 1- vs 2-process training comparisons (`-m multiprocess`, ~3 min).
python3 -m pytest -q -m "not embedded and not families and not multiprocess" "$@"
