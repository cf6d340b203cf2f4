#!/usr/bin/env bash
# Cancel the SLURM jobs that a killed Snakemake run left running (orphans), before rerunning it.
#
#   scripts/slurm/cancel_orphans.sh [WORKDIR]      # WORKDIR: Snakemake's working directory (default .)
#   snakemake --profile profiles/slurm ...          # then rerun the same command
#
# Why: when Snakemake itself dies (SIGKILL, OOM killer, the end of the SLURM job it ran in), the
# jobs it submitted keep running. The rerun (rerun-incomplete, nolock) resubmits them, so two
# copies of a job would write the same outputs and checkpoints at once.
#
# Which jobs: those still queued or running whose working directory is WORKDIR and that the
# Snakemake SLURM executor submitted (its jobs carry the comment rule_<rule>), plus any job id
# recorded in WORKDIR/.snakemake/incomplete/* (JSON {"external_jobid": "<id>"}). The markers alone
# are not enough: the main Snakemake writes the id when it submits the job, but the Snakemake
# that runs the job inside SLURM (the jobstep executor) rewrites the same marker with
# {"external_jobid": null} when the job starts, so a running orphan is named only by its workdir.
# A job of another directory is never touched (nor a recycled id from a marker).
#
# Run it only while no Snakemake is running in WORKDIR (it would cancel that run's jobs). Waits
# until the cancelled jobs have ended, then prints "cancel_orphans: cancelled <ids>" (nothing if
# there was nothing to cancel).
#
# Environment: GRPO_VQA_CANCEL_WAIT seconds to wait for the jobs to end (default 120).
set -euo pipefail

workdir=$(cd "${1:-.}" && pwd -P)
wait_s=${GRPO_VQA_CANCEL_WAIT:-120}
markers="$workdir/.snakemake/incomplete"

same_dir() { [[ "$(cd "$1" 2>/dev/null && pwd -P)" == "$workdir" ]]; }
is_active() {
    case "$1" in
        PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING) return 0 ;;
        *) return 1 ;;
    esac
}

# Job ids named in the markers (one JSON object per file).
marked=()
if [[ -d "$markers" ]]; then
    mapfile -t marked < <(
        find "$markers" -type f -exec cat {} + 2>/dev/null |
            grep -o '"external_jobid"[[:space:]]*:[[:space:]]*"\{0,1\}[0-9][0-9_]*' |
            grep -o '[0-9][0-9_]*$' | sort -u || true
    )
fi

active=()
# id|state|workdir|comment of every job slurmctld knows.
while IFS='|' read -r id state dir comment; do
    is_active "$state" && same_dir "$dir" || continue
    if [[ "$comment" == rule_* ]] || printf '%s\n' "${marked[@]}" | grep -qx "$id"; then
        active+=("$id")
    fi
done < <(squeue --noheader --states=all --format='%i|%T|%Z|%k' 2>/dev/null || true)
for id in "${marked[@]}"; do
    if ! printf '%s\n' "${active[@]}" | grep -qx "$id"; then
        line=$(squeue --noheader --jobs="$id" --states=all --format='%T|%Z' 2>/dev/null | head -n 1 || true)
        if [[ -n "$line" ]] && is_active "${line%%|*}" && ! same_dir "${line#*|}"; then
            echo "cancel_orphans: job $id runs in ${line#*|}, not in $workdir; left alone" >&2
        fi
    fi
done
((${#active[@]})) || exit 0
mapfile -t active < <(printf '%s\n' "${active[@]}" | sort -u)

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
