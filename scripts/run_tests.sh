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
# -m "not embedded": the end-to-end checks on a full embedded-default run (tests/test_embedded_run.py,
# about 10 minutes on 2 cores) run with `python3 -m pytest -m embedded`.
python3 -m pytest -q -m "not embedded" "$@"
