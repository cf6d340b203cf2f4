#!/usr/bin/env bash
# Quick start, command 1: install, then run the whole DAG on the embedded default (offline, 2 CPU cores).
# Results land in results/ (tables in results/tables/, figures in results/figures/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
python3 -m snakemake --profile profiles/local --cores 2 all "$@"
