#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged + slurmctld + slurmd), for tests and CI.
#
# Idempotent: if the cluster is already up with the same configuration it only checks it.
# Installs nothing: install the Debian packages first, e.g.
#     apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# (or the `slurm-wlm munge` metapackages). Runs as root; starts the daemons directly (no systemd).
#
# Environment:
#   GRPO_VQA_SLURM_START_TIMEOUT  seconds to wait for the node to become usable (default 60)
#   GRPO_VQA_SLURM_CONF           where to write slurm.conf (default /etc/slurm/slurm.conf, where
#                                 sinfo/sbatch/squeue look; anywhere else needs SLURM_CONF set)
# Stop it with scripts/slurm/stop_local_slurm.sh.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template="$script_dir/slurm.conf.template"
conf=${GRPO_VQA_SLURM_CONF:-/etc/slurm/slurm.conf}
timeout_s=${GRPO_VQA_SLURM_START_TIMEOUT:-60}
marker="# GRPO_VQA_LOCAL_SLURM"
log_dir=/var/log/slurm
run_dir=/run/slurm
start_ns=$(date +%s%N)

die() {
    echo "start_local_slurm: error: $*" >&2
    exit 1
}

elapsed() {
    local now_ns
    now_ns=$(date +%s%N)
    awk -v a="$start_ns" -v b="$now_ns" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'
}

pid_alive() { # pid_alive PIDFILE: true if the pid file names a running process
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(<"$1")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

show_logs() {
    local f
    for f in "$log_dir/slurmctld.log" "$log_dir/slurmd.log" /var/log/munge/munged.log; do
        if [[ -f "$f" ]]; then
            echo "---- last lines of $f ----" >&2
            tail -n 20 "$f" >&2
        fi
    done
}

[[ $EUID -eq 0 ]] || die "must run as root (it writes $conf and starts the SLURM daemons)"

missing=()
for bin in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch squeue; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if ((${#missing[@]})); then
    die "missing programs: ${missing[*]}. Install them first, e.g.:
    apt-get update && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
fi
[[ -f "$template" ]] || die "template $template not found"

# ---- slurm.conf for this machine ------------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc)
mem_total_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
# Leave headroom for the OS and the daemons: 5 % of RAM, at least 512 MB.
headroom_mb=$((mem_total_mb / 20 > 512 ? mem_total_mb / 20 : 512))
real_memory_mb=$((mem_total_mb - headroom_mb))
((real_memory_mb >= 256)) || die "only ${mem_total_mb} MB of RAM; need at least 768 MB"

new_conf=$(sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cpus/g" -e "s/@REAL_MEMORY@/$real_memory_mb/g" \
    "$template")

if [[ -e "$conf" ]] && ! head -n 1 "$conf" | grep -qF "$marker"; then
    die "$conf exists and was not written by this script; refusing to overwrite it"
fi

conf_changed=0
if [[ ! -f "$conf" ]] || [[ "$(cat "$conf")" != "$new_conf" ]]; then
    conf_changed=1
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$new_conf" >"$conf"
fi

mkdir -p /var/spool/slurmctld /var/spool/slurmd "$log_dir" "$run_dir"

ctld_pidfile="$run_dir/slurmctld.pid"
slurmd_pidfile="$run_dir/slurmd.pid"
munge_pidfile=/run/munge/munged.pid

# A changed configuration needs fresh daemons (scontrol reconfigure does not change nodes).
if ((conf_changed)) && { pid_alive "$ctld_pidfile" || pid_alive "$slurmd_pidfile"; }; then
    echo "start_local_slurm: configuration changed; restarting the SLURM daemons"
    "$script_dir/stop_local_slurm.sh" --keep-munge
fi

# ---- munge ----------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    # The munge package normally creates the key when it is installed.
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge

if ! pid_alive "$munge_pidfile"; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$munge_pidfile"
    runuser -u munge -- munged
fi
if ! munge -n | unmunge >/dev/null 2>&1; then
    show_logs
    die "munge does not work (munge -n | unmunge failed)"
fi

# ---- slurmctld and slurmd -------------------------------------------------------------------
if ! pid_alive "$ctld_pidfile"; then
    slurmctld -f "$conf" || { show_logs; die "slurmctld did not start"; }
fi
if ! pid_alive "$slurmd_pidfile"; then
    slurmd -f "$conf" -N "$host" || { show_logs; die "slurmd did not start"; }
fi

# ---- wait until the node takes jobs ---------------------------------------------------------
export SLURM_CONF="$conf"
deadline=$((SECONDS + timeout_s))
state=""
resumed=0
while ((SECONDS < deadline)); do
    state=$(sinfo --noheader --nodes="$host" --format=%T 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle | mixed | allocated | completing)
            echo "start_local_slurm: node $host is $state (partition debug, $cpus CPUs," \
                "${real_memory_mb} MB); took $(elapsed) s"
            exit 0
            ;;
        down* | drain*)
            # e.g. left down by an earlier unclean stop: ask once to bring it back.
            if ((!resumed)); then
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    sleep 0.5
done

show_logs
die "node $host not usable after ${timeout_s} s (last sinfo state: '${state:-none}');
    daemons: slurmctld $(pid_alive "$ctld_pidfile" && echo up || echo down),\
 slurmd $(pid_alive "$slurmd_pidfile" && echo up || echo down)"
