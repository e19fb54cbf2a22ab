"""Opt-in fast inference backends for :class:`~gumbel_rag.reranker.GumbelReranker` (CPU).

:func:`load_backbone` builds one for a loaded sentence-transformers model, and the reranker is handed
it (as sentence-transformers' own ``backend/`` loaders do); this module knows nothing of the reranker.

``backend="openvino"`` converts the model's transformer backbone (the first sentence-transformers
module: BERT & co. for bi-encoders, the sequence-classification model for cross-encoders) to an
OpenVINO graph compiled for the CPU in float32. Tokenization, pooling, normalisation and scoring stay
the same Python code as the exact path, so scores match it to about 1e-6; the speed comes from
OpenVINO's CPU kernels and from running small, nearly unpadded length buckets on concurrent
single-threaded streams (an ``AsyncInferQueue`` per calling thread). It needs the ``fast`` extra:
``pip install 'gumbel-rag[fast]'``.

Why not sentence-transformers' own ``backend="openvino"``/``"onnx"``: they go through ``optimum``,
whose current releases pin transformers < 4.58, which this project is past. Why not int8 dynamic
quantization: on all-MiniLM-L6-v2 it moves cosine scores by up to 0.1, and its top-5 over HotpotQA's
10 paragraphs agreed with the exact path on only 0.90-0.95 of the documents; NNCF's int8 weights
(0.99 agreement) and int8 post-training quantization (0.96) both ran slower than float32 on an AVX2
CPU without VNNI (docs/performance.md).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from gumbel_rag.errors import ConfigError

__all__ = ["OpenVINOBackbone", "load_backbone"]

# Integer inputs the exported graph takes, in this order, when the tokenizer produces them.
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Backbone(nn.Module):
    """The Hugging Face model with positional tensor inputs and one tensor output, for tracing."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    # Named parameters: the converter names the graph's inputs after them.
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
        return out[self.output]


def _sample_inputs(model: Any, kind: str) -> list[Any]:
    # Two inputs of different lengths, so the traced graph sees padding and a real attention mask.
    if kind == "cross-encoder":
        return [("a query", "a short document"), ("another query", "a longer document with more words in it")]
    return ["a short text", "a longer text with a few more words in it"]


class OpenVINOBackbone:
    """Runs the first sentence-transformers module in OpenVINO, then the remaining modules in torch."""

    # A request costs OpenVINO well under a millisecond, so buckets are split wherever that saves a
    # little padding (see gumbel_rag.reranker._length_buckets); measured in docs/performance.md.
    call_cost_tokens = 16
    max_batch_size = 4
    name = "openvino"

    def __init__(self, model: Any, kind: str) -> None:
        """Convert and compile ``model[0]``'s Hugging Face model (a few seconds; once per load)."""
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError(
                "backend='openvino' needs the openvino package: pip install 'gumbel-rag[fast]'"
            ) from exc
        first = model[0]
        hf_model = getattr(first, "model", None) or first.auto_model
        output = first.modality_config["text"]["method_output_name"]
        if not isinstance(output, str):
            raise NotImplementedError(f"backend='openvino' needs one model output, got {output!r}")
        sample = model.preprocess(_sample_inputs(model, kind))
        names = tuple(n for n in _INPUT_NAMES if isinstance(sample.get(n), torch.Tensor))
        if "input_ids" not in names or "attention_mask" not in names:
            raise NotImplementedError(
                "backend='openvino' supports text models fed input_ids and attention_mask"
            )
        wrapper = _Backbone(hf_model, output).eval()
        with torch.no_grad():
            converted = ov.convert_model(
                wrapper,
                example_input={n: sample[n].cpu() for n in names},
                input=[(n, [-1, -1], ov.Type.i64) for n in names],
            )
        # f32 keeps the scores equal to the exact path's; CPUs with bf16/AMX would otherwise downcast.
        # THROUGHPUT: several single-threaded streams, each running one length bucket; on small
        # batches that beats one stream whose threads split every matrix product (docs/performance.md).
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = ov.Core().compile_model(converted, "CPU", config)
        # Twice the streams in flight, so that a stream never waits while Python hands out the next batch.
        self.jobs = 2 * max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.names = names
        self.output_key = first.module_output_name
        self.rest = list(model)[1:]
        self._local = threading.local()

    def _queue(self) -> Any:
        # Infer requests are not thread-safe; a queue per thread lets a shared reranker serve threads.
        queue = getattr(self._local, "queue", None)
        if queue is None:
            import openvino as ov

            queue = self._local.queue = ov.AsyncInferQueue(self.compiled, self.jobs)
        return queue

    def run_many(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill each batch's ``features[module_output_name]`` like the torch module would (the batches run
        concurrently), then run the later sentence-transformers modules on each."""
        outputs: list[Any] = [None] * len(batches)

        def done(request: Any, slot: int) -> None:
            outputs[slot] = request.get_output_tensor(0).data.copy()

        queue = self._queue()
        queue.set_callback(done)
        for slot, features in enumerate(batches):
            inputs = {n: features[n].detach().cpu().to(torch.int64).numpy() for n in self.names}
            queue.start_async(inputs, slot)
        queue.wait_all()
        results = []
        for features, output in zip(batches, outputs, strict=True):
            features[self.output_key] = torch.from_numpy(output)
            for module in self.rest:
                features = module(features)
            results.append(features)
        return results


def load_backbone(model: Any, kind: str, backend: str) -> OpenVINOBackbone | None:
    """The inference backbone for ``backend`` over a loaded CPU ``model``; ``None`` for exact torch."""
    if backend == "torch":
        return None
    if backend != "openvino":
        raise ConfigError(f"backend must be 'torch' or 'openvino', got {backend!r}")
    if model.device.type != "cpu":
        raise ConfigError(f"backend='openvino' runs on the CPU, but the model is on {model.device}")
    model.eval()
    return OpenVINOBackbone(model, kind)
