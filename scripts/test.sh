#!/usr/bin/env bash
# The whole test suite: set up the environment, lint, build the docs site, run every test (core and
# integrations). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
ruff check .
ruff format --check .
# The documentation site: --strict turns any broken link, anchor or API reference into a failure.
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$SITE"
echo "docs site built (mkdocs build --strict)"
python -m pytest -q -ra "$@"
