#!/usr/bin/env bash
# One scheduled audit run (systemd timer or cron): skip when another run holds the lock, resume a run
# that was killed midway, keep a log per run, and append each audit's row to results/<audit>/history.parquet.
#
# Usage: workflow/schedule/run-audit.sh CONFIG [WORKDIR]
#   CONFIG   the audit config (--configfile), e.g. /data/audits/nightly.yaml
#   WORKDIR  where results/, reports/ and logs/ live (default: the repository root)
# Environment: SNAKEMAKE_ARGS (extra arguments, e.g. "--cores 16" or "--workflow-profile profiles/slurm").
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 CONFIG [WORKDIR]" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=$(realpath "$1")
WORKDIR=$(realpath "${2:-$REPO}")
BIN=${AUDIT_BIN:-$REPO/.venv/bin}
mkdir -p "$WORKDIR"
exec 9>>"$WORKDIR/.audit-run.lock"
if ! flock -n 9; then
    echo "$(date -u +%FT%TZ) another audit run holds $WORKDIR/.audit-run.lock: this run is skipped"
    exit 0
fi
STARTED=$(date -u +%FT%T+00:00)
mkdir -p "$WORKDIR/logs/runs"
LOG="$WORKDIR/logs/runs/$(date -u +%Y%m%dT%H%M%SZ).log"
cd "$REPO"
# The flock above makes this the only scheduled run here: a lock left by a killed run is stale, and SLURM jobs that
# a killed run left (a cluster profile in SNAKEMAKE_ARGS) are waited for, so that none runs twice at once.
"$BIN/python" -m audit.cluster_jobs wait --directory "$WORKDIR" --configfile "$CONFIG" >>"$LOG" 2>&1
"$BIN/snakemake" --unlock --directory "$WORKDIR" --configfile "$CONFIG" >>"$LOG" 2>&1
# shellcheck disable=SC2086
# The listing is forced: an ImageFolder tree can change below its class folders, which no file date shows.
if ! "$BIN/snakemake" --rerun-incomplete --forcerun list_images --directory "$WORKDIR" --configfile "$CONFIG" ${SNAKEMAKE_ARGS:---cores all} >>"$LOG" 2>&1; then
    echo "$(date -u +%FT%TZ) the audit run failed: see $LOG" >&2
    exit 1
fi
"$BIN/python" -m audit.history "$CONFIG" --directory "$WORKDIR" --started "$STARTED" | tee -a "$LOG"
