# shellcheck shell=bash
# Settings for every launch/ script, in one place. Each line keeps a value already set in
# the environment, so override per command (`ZONE=us-central2-b launch/create.sh`) or
# export your own values before running the scripts. Paths on the TPU workers are relative
# to the remote user's home directory.

# --- The TPU VM -------------------------------------------------------------------------
# Name of the TPU VM (a single host or a pod slice).
: "${TPU_NAME:=dreamr}"
# Zone that has the accelerator type below (v5e: us-west4-a, us-east5-b; v4: us-central2-b).
: "${ZONE:=us-west4-a}"
# Google Cloud project; empty uses gcloud's configured default (`gcloud config set project`).
: "${PROJECT:=}"
# Accelerator type: v5litepod-16 (4 hosts x 4 chips), v4-32 (4 hosts x 4 chips), v5litepod-8...
: "${ACCELERATOR_TYPE:=v5litepod-16}"
# TPU software image. Empty picks the one Google documents for the accelerator family:
# v5litepod/v5e -> v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e, others -> tpu-ubuntu2204-base.
: "${RUNTIME_VERSION:=}"
# standard, spot (cheap, can be preempted at any time) or preemptible (legacy, 24 h limit).
: "${PROVISIONING:=standard}"
# Number of hosts; empty asks gcloud (`tpu-vm describe`). Only logs.sh needs it.
: "${NUM_WORKERS:=}"

# --- Where runs write -------------------------------------------------------------------
# GCS bucket (name only, no gs://) the TPU's service account can write; run.sh needs it.
: "${BUCKET:=}"
# Folder inside the bucket; a run's workdir is gs://BUCKET/RUNS_PREFIX/RUN_NAME.
: "${RUNS_PREFIX:=dreamr-runs}"
# Name of the run (workdir and log folder); empty: <config name>-<variant>-<UTC time>.
: "${RUN_NAME:=}"
# Extra environment for the trainer, space-separated KEY=VALUE words (e.g. "HF_HUB_OFFLINE=1").
: "${TRAIN_ENV:=}"

# --- How the code reaches the workers ---------------------------------------------------
# tarball: pack this checkout (tracked and untracked, not ignored, files; uncommitted edits
#   included) and scp it to every worker. Robust default: needs no git credentials on the
#   workers and runs exactly the code you have here.
# git: `git clone` REPO_URL at REPO_BRANCH on every worker (the repo must be reachable from
#   the workers, e.g. public; only committed and pushed code runs).
: "${CODE_SOURCE:=tarball}"
: "${REPO_URL:=}"
: "${REPO_BRANCH:=main}"

# --- Python on the workers / the GPU host -----------------------------------------------
# Python version for the venv (the package needs >= 3.11). TPU images ship Ubuntu 22.04
# with 3.10, so setup.sh installs python3.11 from the deadsnakes PPA when it is missing.
: "${PYTHON_VERSION:=3.11}"
# Extra pip packages for the workers and gpu.sh (space-separated). gcsfs lets etils/Orbax
# read and write gs:// workdirs; it is not a dependency of the package itself.
: "${EXTRA_PIP_PACKAGES:=gcsfs}"
# Checkout, venv and log folders on each worker (relative to the remote home).
: "${REMOTE_REPO_DIR:=dreamr-jax}"
: "${REMOTE_VENV:=dreamr-venv}"
: "${REMOTE_LOG_DIR:=dreamr-logs}"
# Logs on this machine (relative to the current directory unless absolute): logs.sh
# fetches to LOCAL_LOG_DIR/RUN_NAME/worker-N.log, gpu.sh writes LOCAL_LOG_DIR/RUN_NAME/gpu.log.
: "${LOCAL_LOG_DIR:=dreamr-logs}"

# --- gpu.sh (single host) ---------------------------------------------------------------
# Venv that gpu.sh creates and runs from.
: "${GPU_VENV:=$HOME/dreamr-venv}"
# Workdir for gpu.sh runs; empty: runs/RUN_NAME in the repo (ignored by git), or
# gs://BUCKET/RUNS_PREFIX/RUN_NAME when BUCKET is set.
: "${GPU_WORKDIR:=}"
# jax extra for the CUDA build: cuda12 (CUDA 12 driver) or cuda13 where jax offers it.
: "${JAX_GPU_EXTRA:=cuda12}"
# 1: skip creating the venv and pip installs (reuse a venv set up by an earlier gpu.sh).
: "${SKIP_INSTALL:=0}"

# --- Every script -----------------------------------------------------------------------
# 1: print each gcloud/ssh/pip/python command instead of running it.
: "${DRY_RUN:=0}"
