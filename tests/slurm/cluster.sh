#!/usr/bin/env bash
# A single-node SLURM cluster on this machine for the SLURM tests (tests/test_slurm.py):
#   tests/slurm/cluster.sh start    install slurm-wlm and munge if missing (root + apt-get), then start munged,
#                                   slurmctld and slurmd; waits until the node is idle
#   tests/slurm/cluster.sh stop     stop the three daemons and delete the cluster's folder
#   tests/slurm/cluster.sh status   exit 0 when the cluster is up (prints sinfo), 1 when not
#   tests/slurm/cluster.sh env      the line to run SLURM commands against it: export SLURM_CONF=...
# Everything the cluster writes (slurm.conf, munge key and socket, spool, state, logs, pid files, the
# completed-jobs log) lives in one folder, $DIFFUSION_LAB_SLURM_DIR (default /tmp/diffusion-lab-slurm), so that
# stop leaves nothing behind and the machine's own /etc/slurm and munge are never touched. The daemons run as
# root (start needs root). `make test` starts the cluster where it can and stops it after the suite.
set -euo pipefail

DIR=${DIFFUSION_LAB_SLURM_DIR:-/tmp/diffusion-lab-slurm}
# Ports away from SLURM's defaults (6817/6818), so that a machine that is a node of a real cluster is left alone.
CTLD_PORT=${DIFFUSION_LAB_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${DIFFUSION_LAB_SLURM_SLURMD_PORT:-16818}
TEMPLATE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm.conf.in"
export SLURM_CONF="$DIR/slurm.conf"

say() { echo "slurm cluster: $*" >&2; }

alive() { # alive NAME: the daemon NAME started by this script is running
    [ -s "$DIR/$1.pid" ] && ps -p "$(cat "$DIR/$1.pid")" >/dev/null 2>&1
}

node_idle() { [ "$(sinfo -h -o %t 2>/dev/null)" = "idle" ]; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "slurm-wlm and munge are not installed, and installing them needs root and apt-get"
        return 1
    fi
    say "installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge \
        >/dev/null
}

start() {
    if alive slurmctld && alive slurmd && node_idle; then
        say "already running in $DIR"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "needs root (its daemons run as root)"
        return 1
    fi
    install_packages
    stop 2>/dev/null || true
    mkdir -p "$DIR/spool" "$DIR/state" "$DIR/log"
    chmod 755 "$DIR"  # readable by every user of the cluster; the munge key alone is private
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge.key"
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munged.seed"
    local node memory
    node=$(hostname -s)
    # What free reports, less 1 GiB for the system; CR_Core schedules CPUs, so memory is only an upper limit.
    memory=$(free -m | awk '/^Mem:/ {print ($2 > 2048 ? $2 - 1024 : $2)}')
    sed -e "s|@DIR@|$DIR|g" -e "s|@NODE@|$node|g" -e "s|@CPUS@|$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)|g" -e "s|@MEMORY@|$memory|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" "$TEMPLATE" >"$SLURM_CONF"
    slurmctld -c
    slurmd -N "$node"
    for _ in $(seq 60); do
        node_idle && { say "up in $DIR: $(sinfo -h -o '%P %D node(s), %c CPUs, %t')"; return 0; }
        sleep 0.5
    done
    say "the node did not become idle within 30 s; the logs:"
    tail -n 20 "$DIR"/log/*.log >&2 || true
    stop
    return 1
}

stop() {
    local name pid jobs
    if alive slurmctld; then # end the jobs still queued or running: their processes hold files in the folder
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
        fi
    fi
    for name in slurmd slurmctld munged; do
        [ -s "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
}

status() {
    if alive slurmctld && alive slurmd && alive munged && node_idle_or_busy; then
        sinfo
        return 0
    fi
    say "not running (start it with tests/slurm/cluster.sh start, as root)"
    return 1
}

node_idle_or_busy() { [ -n "$(sinfo -h -o %t 2>/dev/null | grep -E '^(idle|mix|alloc)')" ]; }

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
