#!/usr/bin/env bash
# `make cluster-test`: the tiny workflow through Snakemake's SLURM executor on a real
# single-node SLURM started here (ci/cluster/slurm.sh), with the user profile
# profiles/slurm, compared with a local run of the same workflow.
#
#   1. start munged, slurmctld, slurmd (partitions cpu and gpu, one fake GPU);
#   2. copy the workflow into two work directories with the same config
#      (tests/configs/main_tiny.yaml + ci/cluster/overrides.yaml);
#   3. run it locally (profiles/default) and through SLURM (profiles/slurm) side by side;
#   4. check the SLURM jobs (partition, GPUs, local rules, counts) and that both result
#      trees hold the same numbers;
#   5. stop every daemon it started, by PID, whatever happened (trap).
#
# Every wait is bounded: each run by CLUSTER_TEST_TIMEOUT seconds (default 1800), then
# SIGINT (Snakemake then cancels its SLURM jobs) and, 30 s later, SIGKILL. Work directories
# are removed on success and kept (path printed) on failure; KEEP_WORKDIR=1 keeps them.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$REPO/.venv/bin"
HERE="$REPO/ci/cluster"
TIMEOUT="${CLUSTER_TEST_TIMEOUT:-1800}"
CORES="${CORES:-$(nproc)}"
WORKFLOW_FILES=(Snakefile config.yaml rules workflow_scripts profiles ntkbench)

log() { echo "[cluster-test $(date +%H:%M:%S)] $*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ntkbench-cluster-test.XXXXXX")"
LOCAL_PID=""
STATUS=1

cleanup() {
    local rc=$?
    if [ "$STATUS" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=1; fi
    trap - EXIT INT TERM
    if [ -n "$LOCAL_PID" ] && kill -0 "$LOCAL_PID" 2>/dev/null; then
        kill -TERM "$LOCAL_PID" 2>/dev/null || true
    fi
    bash "$HERE/slurm.sh" stop || log "WARNING: stopping the SLURM daemons reported a problem"
    if [ "$rc" -eq 0 ] && [ -z "${KEEP_WORKDIR:-}" ]; then
        rm -rf "$WORK"
    else
        log "work directories kept in $WORK"
    fi
    log "$([ "$rc" -eq 0 ] && echo PASSED || echo "FAILED (exit $rc)") after $((SECONDS / 60)) min $((SECONDS % 60)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[ -x "$BIN/snakemake" ] || { log "no $BIN/snakemake: run 'make install' first"; exit 1; }
"$BIN/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || { log "the SLURM executor plugin is not installed: pip install -e '.[cluster]'"; exit 1; }

log "starting a single-node SLURM"
bash "$HERE/slurm.sh" start

# The same workflow snapshot and config in both work directories. PYTHONPATH makes the
# jobs import the snapshot's ntkbench (not the checkout's, which may change meanwhile).
"$BIN/python" - "$REPO" "$WORK/cluster_test.yaml" <<'EOF'
import sys, yaml
from pathlib import Path
repo, out = Path(sys.argv[1]), Path(sys.argv[2])
config = yaml.safe_load((repo / "tests/configs/main_tiny.yaml").read_text())
overrides = yaml.safe_load((repo / "ci/cluster/overrides.yaml").read_text()) or {}
def merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
merge(config, overrides)
out.write_text(yaml.safe_dump(config, sort_keys=False))
EOF
for run in local slurm; do
    mkdir -p "$WORK/$run"
    for name in "${WORKFLOW_FILES[@]}"; do
        cp -r "$REPO/$name" "$WORK/$run/"
    done
    find "$WORK/$run" -name __pycache__ -prune -exec rm -rf {} +
done

log "local run (profiles/default) and SLURM run (profiles/slurm) of $WORK/cluster_test.yaml"
(
    cd "$WORK/local"
    PYTHONPATH="$WORK/local" exec timeout -s INT -k 30 "$TIMEOUT" "$BIN/snakemake" \
        --cores "$CORES" --configfile "$WORK/cluster_test.yaml"
) >"$WORK/local.log" 2>&1 &
LOCAL_PID=$!

# The user profile as it is; the command line only makes the CI run quicker to notice
# finished jobs, and keeps the SLURM logs of successful jobs for inspection.
set +e
(
    cd "$WORK/slurm"
    PYTHONPATH="$WORK/slurm" exec timeout -s INT -k 30 "$TIMEOUT" "$BIN/snakemake" \
        --workflow-profile profiles/slurm --configfile "$WORK/cluster_test.yaml" \
        --slurm-init-seconds-before-status-checks 5 --slurm-keep-successful-logs
) >"$WORK/slurm.log" 2>&1
SLURM_RC=$?
wait "$LOCAL_PID"
LOCAL_RC=$?
LOCAL_PID=""
set -e

timeout 10 squeue --states=all -h -O 'JobID:|,Partition:|,Comment:|,State:|,tres-per-job:|' \
    >"$WORK/squeue.txt" 2>&1 || true

fail=0
if [ "$LOCAL_RC" -ne 0 ]; then
    log "local run failed (exit $LOCAL_RC$([ "$LOCAL_RC" -ge 124 ] && echo ", timed out?")):"
    tail -40 "$WORK/local.log" >&2
    fail=1
fi
if [ "$SLURM_RC" -ne 0 ]; then
    log "SLURM run failed (exit $SLURM_RC$([ "$SLURM_RC" -ge 124 ] && echo ", timed out?")):"
    tail -60 "$WORK/slurm.log" >&2
    # The SLURM logs of failed jobs (Snakemake names them in its error blocks).
    for f in $(grep -A8 '^Error in rule' "$WORK/slurm.log" | grep -oE '/[^ ,]*slurm_logs/[^ ,]*\.log' | sort -u | head -5); do
        log "SLURM log $f:"
        tail -30 "$f" >&2 || true
    done
    timeout 10 sinfo -N -l >&2 || true
    tail -20 "${NTKBENCH_SLURM_STATE:-/var/tmp/ntkbench-slurm}/log/slurmctld.log" >&2 || true
    fail=1
fi
[ "$fail" -eq 0 ] || exit 1
grep -E '^(SLURM run ID|Finished|Complete log)' "$WORK/slurm.log" >&2 || true

log "checking the SLURM jobs against profiles/slurm"
"$BIN/python" "$HERE/check_run.py" jobs "$WORK/slurm/profiles/slurm/config.yaml" \
    "$WORK/slurm.log" "$WORK/squeue.txt" || fail=1
log "comparing the SLURM run's results with the local run's"
"$BIN/python" "$HERE/check_run.py" compare "$WORK/local/results" "$WORK/slurm/results" || fail=1
[ "$fail" -eq 0 ] || exit 1
STATUS=0
