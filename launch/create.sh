#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates the TPU VM described by launch/settings.sh.
# Usage: launch/create.sh        (DRY_RUN=1 prints the gcloud command instead)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "takes no arguments (got '$*'); set TPU_NAME, ZONE, ACCELERATOR_TYPE... in the environment"
check_tpu_settings

args=("$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$(runtime_version)")
case "$PROVISIONING" in
  spot) args+=(--spot) ;;
  preemptible) args+=(--preemptible) ;;
esac

note "creating $ACCELERATOR_TYPE TPU VM '$TPU_NAME' in $ZONE ($PROVISIONING)"
tpu_vm create "${args[@]}"
note "next: launch/setup.sh"
