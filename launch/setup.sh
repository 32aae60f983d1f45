#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs the code on every worker of the TPU VM: Python venv, `pip install -e .` of the
# repo and jax[tpu] at the version pyproject.toml pins. Safe to rerun (e.g. after editing
# code: it replaces the worker's copy), but not while a run is going.
# Usage: launch/setup.sh          (CODE_SOURCE=tarball|git picks how the code travels)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "takes no arguments (got '$*'); settings come from the environment"
check_tpu_settings
jax_version="$(pinned_jax_version)"
tarball_name="$REMOTE_REPO_DIR.tgz"

case "$CODE_SOURCE" in
  tarball)
    require_tool git "install git: the tarball holds the files git tracks (or CODE_SOURCE=git)"
    require_tool tar "install tar"
    git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
      die "$REPO_ROOT is not a git checkout; use CODE_SOURCE=git REPO_URL=..."
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # Tracked and untracked files that .gitignore does not exclude, minus deleted ones: the
    # checkout as you see it, without venvs, caches or run outputs.
    git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' file; do
        [[ ! -e "$REPO_ROOT/$file" ]] || printf '%s\0' "$file"
      done >"$tmp/files"
    note "packing $(tr -cd '\0' <"$tmp/files" | wc -c) files of $REPO_ROOT (uncommitted edits included)"
    tar -czf "$tmp/$tarball_name" -C "$REPO_ROOT" --null -T "$tmp/files"
    tpu_vm scp "$tmp/$tarball_name" "$TPU_NAME:$tarball_name" --worker=all
    ;;
  git)
    require_setting REPO_URL "export REPO_URL=https://github.com/you/dreamr-jax.git (reachable from the workers)"
    ;;
  *) die "CODE_SOURCE=$CODE_SOURCE; use tarball or git" ;;
esac

note "installing Python $PYTHON_VERSION, the package and jax[tpu]==$jax_version on every worker"
remote_script="$(
  remote_vars "python=python$PYTHON_VERSION" "venv=$REMOTE_VENV" "repo_dir=$REMOTE_REPO_DIR" \
    "tarball=$tarball_name" "code_source=$CODE_SOURCE" "repo_url=$REPO_URL" \
    "repo_branch=$REPO_BRANCH" "jax_version=$jax_version" "extra_packages=$EXTRA_PIP_PACKAGES"
  cat <<'REMOTE'
set -euo pipefail
cd "$HOME"
venv="$HOME/$venv" # absolute: used after cd into the checkout
apt_get() {
  # The lock timeout rides out unattended-upgrades, which holds apt on a fresh VM.
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"
}
if ! command -v "$python" >/dev/null; then
  # TPU images are Ubuntu 22.04 with Python 3.10; deadsnakes has the newer ones.
  apt_get update
  apt_get install software-properties-common
  sudo add-apt-repository -y ppa:deadsnakes/ppa
  apt_get install "$python" "$python-venv"
elif ! "$python" -c 'import ensurepip' 2>/dev/null; then
  apt_get update
  apt_get install "$python-venv"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip

if [ "$code_source" = tarball ]; then
  # Unpack beside the old copy, then swap: files deleted here disappear there too.
  rm -rf "$repo_dir.new"
  mkdir "$repo_dir.new"
  tar -xzf "$tarball" -C "$repo_dir.new"
  rm -rf "$repo_dir" "$tarball"
  mv "$repo_dir.new" "$repo_dir"
elif [ -d "$repo_dir/.git" ]; then
  git -C "$repo_dir" fetch --depth 1 origin "$repo_branch"
  git -C "$repo_dir" reset --hard FETCH_HEAD
else
  rm -rf "$repo_dir"
  git clone --depth 1 --branch "$repo_branch" "$repo_url" "$repo_dir"
fi

cd "$repo_dir"
# One resolve for both, so pip cannot pick a jax that the package's pins reject.
# shellcheck disable=SC2086  # extra_packages is a space-separated list
"$venv/bin/python" -m pip install -q -e . "jax[tpu]==$jax_version" $extra_packages
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import socket

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"

print(socket.gethostname(), *(f"{p}=={version(p)}" for p in ("jax", "jaxlib", "libtpu", "dreamr-jax")))
PY
REMOTE
)"
ssh_all_workers "$remote_script"
note "next: launch/run.sh configs/<config>.py[:variant] [--config.field=value ...]"
