#!/usr/bin/env bash
# The main job: set up the environment, then fine-tune the default reranker on generated multi-hop QA.
# Extra arguments go to `gumbel-rag demo` (see `gumbel-rag demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec gumbel-rag demo "$@"
