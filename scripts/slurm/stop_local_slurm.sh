#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by scripts/slurm/start_local_slurm.sh.
#
# Cancels the jobs still queued or running on it, then stops slurmd, slurmctld and munged
# (each by the pid in its pid file). Safe to run when nothing is running.
#   --keep-munge   leave munged running (used by the start script when it restarts SLURM)
set -euo pipefail

keep_munge=0
for arg in "$@"; do
    case "$arg" in
        --keep-munge) keep_munge=1 ;;
        *)
            echo "usage: $0 [--keep-munge]" >&2
            exit 2
            ;;
    esac
done

conf=${GRPO_VQA_SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF="$conf"

stop_pidfile() { # stop_pidfile NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid i
    [[ -s "$pidfile" ]] || return 0
    pid=$(<"$pidfile")
    if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop_local_slurm: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "stop_local_slurm: stopped $name (pid $pid)"
}

# Cancel the jobs first, so that no job processes outlive the daemons.
if [[ -s /run/slurm/slurmctld.pid ]] && command -v squeue >/dev/null 2>&1; then
    mapfile -t jobs < <(squeue --noheader --format=%i 2>/dev/null || true)
    if ((${#jobs[@]})); then
        scancel "${jobs[@]}" 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do
            [[ -z "$(squeue --noheader --format=%i 2>/dev/null || true)" ]] && break
            sleep 0.5
        done
        echo "stop_local_slurm: cancelled ${#jobs[@]} job(s)"
    fi
fi

stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
if ((!keep_munge)); then
    stop_pidfile munged /run/munge/munged.pid
fi
