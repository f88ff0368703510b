#!/usr/bin/env bash
# Set up (see setup.sh), then run every check: ruff, mypy and the test suite.
# Tests that need a service this machine lacks are skipped, and the summary at
# the end names each one with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check pkifed tests
.venv/bin/ruff format --check pkifed tests
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# Tests of one module share module-scoped services (SoftHSM2 tokens, local
# clouds), so each module runs on one worker instead of starting them twice.
.venv/bin/pytest -n "${PKIFED_TEST_WORKERS:-2}" --dist loadscope "$@"
