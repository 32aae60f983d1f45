#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Single-host GPU training: creates GPU_VENV, installs the package and jax[cuda12] at the
# pinned version, then trains here with output teed to LOCAL_LOG_DIR/<run>/gpu.log.
# Usage: launch/gpu.sh CONFIG [extra train args...]
#   e.g. launch/gpu.sh configs/demo.py:tiny --config.train.steps=100
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="launch/gpu.sh CONFIG [extra train args...], e.g. launch/gpu.sh configs/demo.py"
check_config_arg "${1:-}" "$usage"
config="$1"
shift
require_tool nvidia-smi "this script needs an NVIDIA GPU with its driver installed"
python="$GPU_VENV/bin/python"
if [[ "$SKIP_INSTALL" == 1 ]]; then
  [[ -x "$python" ]] || is_dry_run || die "SKIP_INSTALL=1 but $python does not exist; run once without it"
else
  require_tool "python$PYTHON_VERSION" "install Python $PYTHON_VERSION (with venv) or set PYTHON_VERSION"
fi
run="$(run_name_for "$config")"
workdir="$GPU_WORKDIR"
if [[ -z "$workdir" ]]; then
  if [[ -n "$BUCKET" ]]; then
    workdir="gs://$BUCKET/$RUNS_PREFIX/$run"
  else
    workdir="$REPO_ROOT/runs/$run"
  fi
fi
log="$LOCAL_LOG_DIR/$run/gpu.log"
[[ "$log" == /* ]] || log="$PWD/$log" # the trainer runs from the repo root
[[ ! -e "$log" ]] || die "$log exists; set another RUN_NAME"
read -r -a train_env <<<"$TRAIN_ENV"
read -r -a extra_packages <<<"$EXTRA_PIP_PACKAGES"

if [[ "$SKIP_INSTALL" != 1 ]]; then
  jax_version="$(pinned_jax_version)"
  [[ -x "$python" ]] || run_cmd "python$PYTHON_VERSION" -m venv "$GPU_VENV"
  run_cmd "$python" -m pip install -q --upgrade pip
  run_cmd "$python" -m pip install -q -e "$REPO_ROOT" "jax[$JAX_GPU_EXTRA]==$jax_version" \
    ${extra_packages[@]+"${extra_packages[@]}"}
fi

cmd=(env PYTHONUNBUFFERED=1 ${train_env[@]+"${train_env[@]}"} "$python" -m dreamr_jax.train
  "--config=$config" "--workdir=$workdir" "$@")
note "run $run: workdir $workdir, log $log"
cd "$REPO_ROOT"
if is_dry_run; then
  run_cmd "${cmd[@]}"
  note "dry run: output would be teed to $log"
else
  mkdir -p "$(dirname "$log")"
  # pipefail (set above) makes the script exit with the trainer's status, not tee's.
  "${cmd[@]}" 2>&1 | tee "$log"
fi
