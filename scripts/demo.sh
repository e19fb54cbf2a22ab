#!/usr/bin/env bash
# The main job: set up the environment, fine-tune the default reranker on generated multi-hop QA
# (gumbel-rag demo), then rerank a held-out question with the saved model through the LangChain
# integration. Extra arguments go to `gumbel-rag demo` (see `gumbel-rag demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"

# The integration step needs the demo's output directory: the same --output the demo gets.
OUTPUT="outputs/demo"
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    case "${ARGS[i]}" in
        --output) OUTPUT="${ARGS[i + 1]:-$OUTPUT}" ;;
        --output=*) OUTPUT="${ARGS[i]#--output=}" ;;
        -h | --help | --version) exec gumbel-rag demo "$@" ;;
    esac
done

START=$SECONDS
gumbel-rag demo "$@"
# The core imports no framework, so the integration runs as its own step, as an application would.
python scripts/demo_integration.py --model "$OUTPUT/model" --data "$OUTPUT/data/dev.jsonl" --compare-default
# The paths again, last, where they are easy to find (the demo printed them before the integration step).
MODEL="$OUTPUT/model"
echo
echo "model:   $MODEL  (load it with GumbelReranker.from_pretrained, SentenceTransformer or any integration)"
echo "logs:    $MODEL/logs  (tensorboard --logdir $MODEL/logs)"
echo "curves:  $MODEL/logs/curves.png"
echo "results: $OUTPUT/demo_results.json"
echo "main job done in $((SECONDS - START)) s"
