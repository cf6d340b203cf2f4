#!/usr/bin/env bash
# Snakemake's HTML report of a finished run, plus a screenshot of its landing page (headless Chromium).
#   bash scripts/make_report.sh [WORKDIR]      # writes WORKDIR/results/report.html and report_screenshot.png
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
workdir=$(cd "${1:-$repo}" && pwd)
cd "$workdir"
python3 -m snakemake -s "$repo/workflow/Snakefile" --report results/report.html
if command -v chromium >/dev/null; then
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1400,2400 \
    --virtual-time-budget=10000 --screenshot="$workdir/results/report_screenshot.png" \
    "file://$workdir/results/report.html" 2>/dev/null
  rm -rf "$profile"
  echo "screenshot: $workdir/results/report_screenshot.png"
fi
echo "report: $workdir/results/report.html"
