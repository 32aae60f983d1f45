#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts training on every worker at once, detached (setsid + nohup): closing this terminal
# or losing SSH does not stop it. Worker N logs to ~/dreamr-logs/<run>/worker-N.log on its
# host (launch/logs.sh fetches them); the workdir is gs://BUCKET/RUNS_PREFIX/<run>.
# Usage: launch/run.sh CONFIG [extra train args...]
#   e.g. launch/run.sh configs/demo.py:tiny --config.train.steps=100
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="launch/run.sh CONFIG [extra train args...], e.g. launch/run.sh configs/demo.py"
check_config_arg "${1:-}" "$usage"
config="$1"
shift
check_tpu_settings
require_setting BUCKET "export BUCKET=my-bucket (a GCS bucket the TPU's service account can write; no gs://)"
[[ "$BUCKET" != gs://* ]] || die "BUCKET=$BUCKET: give the bucket name without gs://"
run="$(run_name_for "$config")"
workdir="gs://$BUCKET/$RUNS_PREFIX/$run"
read -r -a train_env <<<"$TRAIN_ENV"

note "run $run: $config on all workers of $TPU_NAME, workdir $workdir"
remote_script="$(
  remote_vars "venv=$REMOTE_VENV" "repo_dir=$REMOTE_REPO_DIR" "log_root=$REMOTE_LOG_DIR" \
    "run=$run" "config=$config" "workdir=$workdir"
  printf 'train_env=(%s)\n' "$(printf '%q ' PYTHONUNBUFFERED=1 ${train_env[@]+"${train_env[@]}"})"
  printf 'train_args=(%s)\n' "$(printf '%q ' "--config=$config" "--workdir=$workdir" "$@")"
  cat <<'REMOTE'
set -euo pipefail
# The worker's index in the slice, from the metadata server; hostnames end in -w-N too.
worker="$(curl -fsS -m 10 -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number ||
  true)"
if ! [[ "$worker" =~ ^[0-9]+$ ]]; then
  worker="$(hostname)"
  worker="${worker##*-w-}"
fi
[[ "$worker" =~ ^[0-9]+$ ]] || worker="$(hostname)"
python="$HOME/$venv/bin/python"
[ -x "$python" ] && [ -d "$HOME/$repo_dir" ] ||
  { echo "worker $worker: no ~/$venv or ~/$repo_dir; run launch/setup.sh first" >&2; exit 1; }
log_dir="$HOME/$log_root/$run"
log="$log_dir/worker-$worker.log"
mkdir -p "$log_dir"
if [ -e "$log" ]; then
  echo "worker $worker: ~/$log_root/$run/worker-$worker.log exists; set another RUN_NAME" >&2
  exit 1
fi
cd "$HOME/$repo_dir"
setsid nohup env "${train_env[@]}" "$python" -m dreamr_jax.train "${train_args[@]}" \
  >"$log" 2>&1 </dev/null &
echo "$!" >"$log_dir/worker-$worker.pid"
echo "worker $worker: started pid $! ($config), log ~/$log_root/$run/worker-$worker.log"
REMOTE
)"
ssh_all_workers "$remote_script"
is_dry_run || note "started. Logs: launch/logs.sh $run   Workdir: $workdir"
