#!/usr/bin/env bash
# A throw-away single-node SLURM on this machine, for `make cluster-test`.
#
#   ci/cluster/slurm.sh install   apt-get install slurm-wlm munge (skipped when present)
#   ci/cluster/slurm.sh start     write /etc/slurm/{slurm,gres}.conf, start munged, slurmctld,
#                                 slurmd; wait (bounded) until the node is idle
#   ci/cluster/slurm.sh stop      cancel its jobs, stop exactly the daemons `start` started (by PID)
#   ci/cluster/slurm.sh status    sinfo / squeue
#
# Needs root (CI runs as root). It refuses to touch a machine that already has a SLURM
# configuration it did not write, or a slurmctld/slurmd it did not start.
# State, logs and PID files live in $NTKBENCH_SLURM_STATE (default /var/tmp/ntkbench-slurm).
set -eEuo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${NTKBENCH_SLURM_STATE:-/var/tmp/ntkbench-slurm}"
MARKER="written by ntkbench ci/cluster/slurm.sh"
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf

log() { echo "[slurm.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, writes /etc/slurm and starts daemons)"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll once a second until COMMAND succeeds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - t0 >= limit )); then
            log "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 1
    done
    log "$what (after $((SECONDS - t0))s)"
}

# pids_named NAME: PIDs of running programs called NAME (no procps needed).
pids_named() {
    local f
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = "$1" ] && { f=${f#/proc/}; echo "${f%/comm}"; }
    done
    return 0
}

# alive PID NAME: the process PID exists and is the program NAME (guards against PID reuse).
alive() {
    local pid=$1 name=$2
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

cmd_install() {
    local missing=()
    for exe in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "slurm-wlm and munge already installed ($(slurmctld -V))"
        return 0
    fi
    need_root
    log "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -qq
    timeout 1800 apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    log "installed $(slurmctld -V)"
}

munge_works() { timeout 5 munge -n | timeout 5 unmunge >/dev/null; }

start_munged() {
    if munge_works 2>/dev/null; then
        log "a munged is already running (not started here; it will be left alone)"
        return 0
    fi
    [ -s /etc/munge/munge.key ] || {
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    # setpriv execs munged in place, so $! is munged's own PID.
    setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground >>"$STATE/log/munged.out" 2>&1 &
    echo $! >"$STATE/munged.ours"
    wait_for 20 "munged answers" munge_works || { tail -20 "$STATE/log/munged.out" >&2 || true; return 1; }
}

node_idle() {
    local s
    s=$(timeout 10 sinfo -h -n "$HOST" -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')
    [[ "$s" == "idle " || "$s" == "mix " ]]
}

write_config() {
    if [ -e "$CONF" ] && ! grep -q "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real SLURM configuration"
    fi
    local cpus mem_total_mb mem
    cpus=$(nproc)
    mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem=$(( mem_total_mb * 3 / 4 ))   # RealMemory below the machine's
    mkdir -p /etc/slurm
    sed -e "s|@MARKER@|$MARKER|" -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" \
        -e "s|@CPUS@|$cpus|" -e "s|@MEM@|$mem|" "$HERE/slurm.conf.in" >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    printf '# %s\nNodeName=%s Name=gpu File=/dev/null\n' "$MARKER" "$HOST" >"$GRES"
    log "wrote $CONF (node $HOST, CPUs=$cpus, RealMemory=$mem MB, partitions cpu and gpu, 1 fake GPU)"
}

cmd_start() {
    need_root
    # A start that fails half-way stops what it did start.
    trap 'log "start failed; stopping what was started"; cmd_stop quiet' ERR
    cmd_install
    HOST=$(hostname -s)
    # Leftovers of an earlier run that was killed before it could clean up.
    cmd_stop quiet
    local exe pids
    for exe in slurmctld slurmd; do
        pids=$(pids_named "$exe")
        [ -z "$pids" ] || die "a $exe is already running and was not started by this script (pid $(echo $pids))"
    done
    rm -rf "$STATE"
    mkdir -p "$STATE/log" "$STATE/slurmctld" "$STATE/slurmd"
    write_config
    start_munged
    # -D: foreground, so $! is the daemon itself; output goes to its log file.
    slurmctld -D -i >>"$STATE/log/slurmctld.out" 2>&1 &
    echo $! >"$STATE/slurmctld.ours"
    wait_for 30 "slurmctld answers" timeout 5 scontrol ping \
        || { tail -30 "$STATE/log/slurmctld.log" >&2 || true; return 1; }
    slurmd -D >>"$STATE/log/slurmd.out" 2>&1 &
    echo $! >"$STATE/slurmd.ours"
    if ! wait_for 60 "node $HOST idle" node_idle; then
        timeout 10 sinfo -N -l >&2 || true
        tail -30 "$STATE/log/slurmd.log" >&2 || true
        return 1
    fi
    timeout 10 sinfo -o '%P %a %D %t %c %m %G' >&2 || true
}

# stop_daemon NAME: SIGTERM the PID recorded in $STATE/NAME.ours, SIGKILL after 15 s.
stop_daemon() {
    local name=$1 file="$STATE/$1.ours" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if alive "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        local t0=$SECONDS
        while alive "$pid" "$name" && (( SECONDS - t0 < 15 )); do sleep 0.5; done
        if alive "$pid" "$name"; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

cmd_stop() {
    local quiet=${1:-}
    if [ -f "$STATE/slurmctld.ours" ] && alive "$(cat "$STATE/slurmctld.ours")" slurmctld; then
        # Cancel whatever is still queued or running, and give the job steps time to end.
        local ids
        ids=$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED -o '%i' 2>/dev/null || true)
        if [ -n "$ids" ]; then
            log "cancelling jobs: $(echo $ids)"
            timeout 10 scancel $ids 2>/dev/null || true
            local t0=$SECONDS
            while [ -n "$(timeout 10 squeue -h -t RUNNING,COMPLETING -o '%i' 2>/dev/null || true)" ] \
                  && (( SECONDS - t0 < 30 )); do sleep 1; done
        fi
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    [ -n "$quiet" ] || log "all daemons started by this script are stopped"
}

cmd_status() {
    timeout 10 sinfo || true
    timeout 10 squeue --states=all || true
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
