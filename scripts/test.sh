#!/usr/bin/env bash
# The project's test command: lint, format check, then the whole test suite on CPU.
# Usage (README): pip install -e '.[test]' && bash scripts/test.sh [extra pytest args]
# TEST_WORKERS=N sets the number of parallel test processes (default 2, the CI machine's cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# No model or tokenizer is fetched at run time; tests/conftest.py sets the fake-device
# XLA_FLAGS itself.
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

python -m ruff check .
python -m ruff format --check .

# Whole test files run in parallel worker processes (pytest-xdist; a file's module fixtures
# stay in one worker), handed out in collection order (tests/conftest.py puts the longest
# files first; xdist's default would reorder them by test count). TEST_WORKERS=0 runs
# everything in this process.
rc=0
python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure." >&2
  exit 1
fi
exit "$rc"
