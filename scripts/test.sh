#!/usr/bin/env bash
# The whole test suite: set up the environment, lint, run every test (core and integrations).
# Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
ruff check .
ruff format --check .
python -m pytest -q -ra "$@"
