#!/usr/bin/env bash
# The project's test command: lint, format check, then the whole test suite on CPU.
# Usage (README): pip install -e '.[test]' && bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# No model or tokenizer is fetched at run time; tests/conftest.py sets the fake-device
# XLA_FLAGS itself.
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

python -m ruff check .
python -m ruff format --check .

rc=0
python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure." >&2
  exit 1
fi
exit "$rc"
