#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Copies the workers' logs here: LOCAL_LOG_DIR/<run>/worker-N.log, one scp per worker
# (gcloud cannot copy from several workers at once). Without RUN, fetches every run.
# Usage: launch/logs.sh [RUN]       (RUN as printed by launch/run.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -le 1 && "${1:-}" != -* ]] || die "unknown arguments '$*'. Usage: launch/logs.sh [RUN]"
check_tpu_settings
run="${1:-$RUN_NAME}"
if [[ -n "$run" ]]; then
  [[ "$run" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run name '$run'; use the name launch/run.sh printed"
  source_path="$REMOTE_LOG_DIR/$run"
else
  source_path="$REMOTE_LOG_DIR/*" # expanded by the worker's shell: every run folder
fi

workers="$NUM_WORKERS"
if [[ -z "$workers" ]]; then
  tpu_vm_command describe "$TPU_NAME" '--format=value(networkEndpoints.len())'
  if is_dry_run; then
    run_cmd "${TPU_CMD[@]}"
    workers=1
    note "dry run: assuming 1 worker (set NUM_WORKERS to skip the describe call)"
  else
    workers="$("${TPU_CMD[@]}")" ||
      die "cannot describe TPU VM '$TPU_NAME' in $ZONE; is it created? (gcloud compute tpus tpu-vm list --zone=$ZONE)"
  fi
fi
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "worker count '$workers' is not a positive integer; set NUM_WORKERS"

run_cmd mkdir -p "$LOCAL_LOG_DIR"
for ((i = 0; i < workers; i++)); do
  tpu_vm scp --recurse "--worker=$i" "$TPU_NAME:$source_path" "$LOCAL_LOG_DIR/"
done
note "logs in $LOCAL_LOG_DIR/${run:-<run>}/worker-N.log"
