#!/usr/bin/env bash
# Quick start, command 2: install (incl. SLURM for the cluster tests), then run every test: ruff, the unit and
# workflow tests, and the end-to-end checks the README's claims rest on (markers `embedded`: a full embedded-
# default run; `families`: every family table on tiny settings; `paper`: config/paper.yaml on tiny models and
# fixtures; `multiprocess`: 1- vs 2-process training). CI runs exactly this (.ci/run). About 60-70 minutes on 2 cores.
#   bash scripts/run_tests.sh                       # everything
#   bash scripts/run_tests.sh -k resume             # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export HF_HUB_OFFLINE=1 GRPO_VQA_REQUIRE_SLURM=1 GRPO_VQA_REQUIRE_CHROMIUM=1
scripts/slurm/start_local_slurm.sh
trap 'scripts/slurm/stop_local_slurm.sh || true' EXIT
python3 -m ruff check .
python3 -m ruff format --check .
# The embedded-default run the `embedded` tests check is kept here, and its table printed below: the README's
# "What the default run gives" quotes the table of such a run.
# A fresh run each time (snakemake would reuse an earlier run whose package code has since changed), on two
# seeds: every check holds for each (README, "What the default run gives").
export GRPO_VQA_EMBEDDED_DIR="${GRPO_VQA_EMBEDDED_DIR:-results/test-runs/embedded}"
export GRPO_VQA_EMBEDDED_SEEDS="${GRPO_VQA_EMBEDDED_SEEDS:-1234,7}"
rm -rf "$GRPO_VQA_EMBEDDED_DIR"
status=0
python3 -m pytest -q --durations=25 "$@" || status=$?
table="$GRPO_VQA_EMBEDDED_DIR/results/tables/vsr_main.md"
if [[ -f "$table" ]]; then
  echo "=== the embedded default's table from this run ($table) ==="
  cat "$table"
fi
exit "$status"
