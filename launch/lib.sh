# shellcheck shell=bash
# Helpers shared by the launch/ scripts. Sourced after settings.sh; defines functions and
# LAUNCH_DIR, REPO_ROOT, SCRIPT only (no commands run at source time).

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"
SCRIPT="launch/$(basename "$0")"

# Prints an error naming the script and exits non-zero.
die() {
  printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
  exit 1
}

# Progress messages go to stderr so stdout holds only the commands of a dry run.
note() {
  printf '%s: %s\n' "$SCRIPT" "$*" >&2
}

is_dry_run() {
  [[ "$DRY_RUN" != 0 && -n "$DRY_RUN" ]]
}

# Runs a command, or with DRY_RUN=1 prints it (shell-quoted, so it can be pasted) instead.
run_cmd() {
  if is_dry_run; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

require_tool() {
  local tool="$1" fix="$2"
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH; $fix"
}

# Fails unless the named setting (see launch/settings.sh) is non-empty.
require_setting() {
  local name="$1" fix="$2"
  [[ -n "${!name}" ]] || die "$name is not set; $fix (settings: launch/settings.sh)"
}

# Checks the settings every TPU script uses, and that gcloud is installed.
check_tpu_settings() {
  require_tool gcloud "install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
  require_setting TPU_NAME "export TPU_NAME=my-tpu"
  require_setting ZONE "export ZONE=us-west4-a (a zone that offers $ACCELERATOR_TYPE)"
  require_setting ACCELERATOR_TYPE "export ACCELERATOR_TYPE=v5litepod-16"
  case "$PROVISIONING" in
    standard | spot | preemptible) ;;
    *) die "PROVISIONING=$PROVISIONING; use standard, spot or preemptible" ;;
  esac
}

# Sets TPU_CMD to `gcloud compute tpus tpu-vm SUBCOMMAND ARGS...` for this TPU's zone (and
# project, if set).
tpu_vm_command() {
  TPU_CMD=(gcloud compute tpus tpu-vm "$@" "--zone=$ZONE")
  [[ -z "$PROJECT" ]] || TPU_CMD+=("--project=$PROJECT")
}

# Runs (or with DRY_RUN=1 prints) `gcloud compute tpus tpu-vm SUBCOMMAND ARGS...`.
tpu_vm() {
  tpu_vm_command "$@"
  run_cmd "${TPU_CMD[@]}"
}

# Runs a bash script on every worker at once (the remote login shell is bash on TPU VMs).
ssh_all_workers() {
  tpu_vm ssh "$TPU_NAME" --worker=all "--command=$1"
}

# Prints `name=<quoted value>` lines: the variables heading a script sent to the workers,
# so the script body itself can be a quoted heredoc with no escaping.
remote_vars() {
  local pair
  for pair in "$@"; do
    printf '%s=%q\n' "${pair%%=*}" "${pair#*=}"
  done
}

# The TPU software image: RUNTIME_VERSION, or the documented one for the accelerator family.
runtime_version() {
  if [[ -n "$RUNTIME_VERSION" ]]; then
    echo "$RUNTIME_VERSION"
    return
  fi
  case "$ACCELERATOR_TYPE" in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# The project's pinned jax version ("jax==X" in pyproject.toml), so TPU/GPU installs match CI.
pinned_jax_version() {
  local version
  version="$(sed -n 's/^[[:space:]]*"jax==\([^"]*\)".*/\1/p' "$REPO_ROOT/pyproject.toml" | head -n 1)"
  [[ -n "$version" ]] || die "no \"jax==VERSION\" pin found in $REPO_ROOT/pyproject.toml"
  echo "$version"
}

# Checks a CONFIG argument (configs/X.py[:variant], relative to the repo root, which is the
# trainer's working directory on every host).
check_config_arg() {
  local config="${1:-}" usage="$2"
  [[ -n "$config" ]] || die "missing CONFIG. Usage: $usage"
  [[ "$config" != -* ]] || die "the first argument must be CONFIG, got '$config'. Usage: $usage"
  local path="${config%%:*}"
  [[ "$path" != /* && -f "$REPO_ROOT/$path" ]] ||
    die "config file '$path' not found under $REPO_ROOT; pass a repo-relative path such as configs/demo.py[:variant]"
}

# RUN_NAME, or <config>-<variant>-<UTC time> from the CONFIG argument; safe in paths.
run_name_for() {
  local name="$RUN_NAME"
  if [[ -z "$name" ]]; then
    local config="$1" base
    base="$(basename "${config%%:*}" .py)"
    [[ "$config" != *:* ]] || base="$base-${config#*:}"
    name="$base-$(date -u +%Y%m%d-%H%M%S)"
    name="${name//[^A-Za-z0-9._-]/-}"
  fi
  [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME='$name' may only use letters, digits, '.', '_' and '-'"
  echo "$name"
}
