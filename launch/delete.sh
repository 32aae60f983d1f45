#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the TPU VM (asks first). Logs still on the workers are lost: launch/logs.sh first.
# Usage: launch/delete.sh [-y]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

yes=0
for arg in "$@"; do
  case "$arg" in
    -y | --yes) yes=1 ;;
    *) die "unknown argument '$arg'. Usage: launch/delete.sh [-y]" ;;
  esac
done
check_tpu_settings

if [[ "$yes" != 1 ]]; then
  answer=""
  read -r -p "Delete TPU VM '$TPU_NAME' in $ZONE? Its disks and logs go with it. [y/N] " answer || true
  case "$answer" in
    y | Y | yes | YES) ;;
    *) die "not deleting '$TPU_NAME' (answer y, or pass -y)" ;;
  esac
fi

# --quiet: we asked already; gcloud would otherwise ask again.
tpu_vm delete "$TPU_NAME" --quiet
