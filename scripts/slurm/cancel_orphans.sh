#!/usr/bin/env bash
# Cancel the SLURM jobs that a killed Snakemake run left running (orphans), before rerunning it.
#
#   scripts/slurm/cancel_orphans.sh [WORKDIR]      # WORKDIR: Snakemake's working directory (default .)
#   snakemake --profile profiles/slurm ...          # then rerun the same command
#
# Why: when Snakemake itself dies (SIGKILL, OOM killer, the end of the SLURM job it ran in), the
# jobs it submitted keep running. The rerun (rerun-incomplete, nolock) resubmits them, so two
# copies of a job would write the same outputs and checkpoints at once. The SLURM executor
# records each submitted job's id in the job's incomplete-output marker
# (WORKDIR/.snakemake/incomplete/*, JSON {"external_jobid": "<id>"}), which Snakemake removes
# when the job finishes; so the markers left after a kill name exactly the orphans.
#
# Cancels those jobs that are still queued or running *and* run in WORKDIR (a recycled job id of
# someone else's job is never touched), then waits until they are gone. Run it only while no
# Snakemake is running in WORKDIR (it would cancel that run's jobs). Prints the cancelled ids.
#
# Environment: GRPO_VQA_CANCEL_WAIT seconds to wait for the jobs to end (default 120).
set -euo pipefail

workdir=$(cd "${1:-.}" && pwd -P)
wait_s=${GRPO_VQA_CANCEL_WAIT:-120}
markers="$workdir/.snakemake/incomplete"

[[ -d "$markers" ]] || exit 0

# Job ids named in the markers (one JSON object per file).
mapfile -t ids < <(
    find "$markers" -type f -exec cat {} + 2>/dev/null |
        grep -o '"external_jobid"[[:space:]]*:[[:space:]]*"\{0,1\}[0-9][0-9_]*' |
        grep -o '[0-9][0-9_]*$' | sort -u
)
((${#ids[@]})) || exit 0

active=()
for id in "${ids[@]}"; do
    # state|workdir while slurmctld still lists the job; nothing once it is long gone.
    line=$(squeue --noheader --jobs="$id" --states=all --format='%T|%Z' 2>/dev/null | head -n 1 || true)
    state=${line%%|*}
    dir=${line#*|}
    case "$state" in
        PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING) ;;
        *) continue ;;
    esac
    if [[ "$(cd "$dir" 2>/dev/null && pwd -P)" != "$workdir" ]]; then
        echo "cancel_orphans: job $id runs in $dir, not in $workdir; left alone" >&2
        continue
    fi
    active+=("$id")
done
((${#active[@]})) || exit 0

scancel "${active[@]}"
deadline=$((SECONDS + wait_s))
while ((SECONDS < deadline)); do
    left=$(squeue --noheader --jobs="$(
        IFS=,
        echo "${active[*]}"
    )" --states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED --format=%i 2>/dev/null || true)
    [[ -z "$left" ]] && break
    sleep 1
done
if [[ -n "${left:-}" ]]; then
    echo "cancel_orphans: jobs still not ended after ${wait_s} s: $left" >&2
    exit 1
fi
echo "cancel_orphans: cancelled ${active[*]}"
