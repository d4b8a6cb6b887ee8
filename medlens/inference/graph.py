"""The exported inference graph: a classification network and its feature tap as one ONNX graph,
answered by ONNX Runtime on the CPU.

:func:`export_graph` exports the network a bundle answers with (BatchNorm already folded) so that
one run gives both outputs an answer needs: the logits and the input of the head (the features
the out-of-distribution guard reads). The graph is kept only when both outputs equal the PyTorch
network's within :data:`GRAPH_TOLERANCE` on seeded random inputs; otherwise (or when an operator
does not export) the bundle answers with PyTorch, and says so in the log.

Measured on the 2-core CPU of BENCHMARKS.md (one process, each median of 20-200 calls, 2026-12-05): cnn-small at
224 px batch 1: PyTorch 3.3 ms, ONNX Runtime 1.0 ms; at 28 px batch 64 17.6 vs 7.5 ms; resnet18 at
28 px batch 64 290 vs 289 ms (no gain: its convolutions dominate either way).

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``): 0.1-1.4 s per network
here where the torch.export-based one took 1.5-16 s; torch is pinned, so the deprecated path stays.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRAPH_TOLERANCE = 1e-5
"""Largest difference allowed between the graph's outputs and the PyTorch network's (logits
absolute; features relative to their largest magnitude, at least 1)."""

OPSET = 17


class InferenceGraph:
    """An ONNX Runtime session answering (logits, features) for a batch (N, C, ...) of float32."""

    def __init__(self, model: bytes, *, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # No busy-waiting after a run: the service's Python threads need the cores between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, K) and features (N, D) of inputs ``x``; safe to call from several threads."""
        logits, features = self.session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return logits, features


def export_graph(module: Any, example: Any, *, name: str) -> InferenceGraph | None:
    """The ONNX graph of ``module`` (eval mode, on the CPU, answering (logits, features) for a
    batch) with a dynamic batch axis; None (with a log line) when it does not export or differs
    from ``module`` by more than :data:`GRAPH_TOLERANCE`."""
    import torch

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            module(example)  # an eager call first: what it caches (MC dropout's masks) the trace reads as constants
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object too
                input_names=["x"],
                output_names=["logits", "features"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "rows"}, "features": {0: "rows"}},
                opset_version=OPSET,
                dynamo=False,
            )
        graph = InferenceGraph(buffer.getvalue(), threads=torch.get_num_threads())
        difference = graph_difference(graph, module, example)
    except Exception as error:  # any exporter or runtime failure means: answer with PyTorch
        log.warning("%s: no ONNX graph (%s: %s): answering with PyTorch", name, type(error).__name__, error)
        return None
    if difference <= GRAPH_TOLERANCE:
        return graph
    log.warning("%s: the ONNX graph differs from the network by %.2g: answering with PyTorch", name, difference)
    return None


def network_with_features(net: Any) -> Any:
    """A copy of classifier ``net`` answering (logits, the head's input): what :func:`export_graph`
    exports for plain forward passes (the copy keeps the export's hook off the shared network)."""
    import copy

    import torch

    from medlens.models.deep.encoder import WithFeatures

    return WithFeatures(copy.deepcopy(net).to(memory_format=torch.contiguous_format)).eval()


def graph_difference(graph: InferenceGraph, module: Any, example: Any) -> float:
    """Largest difference between the graph and ``module`` on seeded random inputs of
    ``example``'s shape (a batch of 3: the export traced a batch of 1, so the batch axis is exercised)."""
    import torch

    x = torch.rand(3, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = (t.double().numpy() for t in module(x))
    got_logits, got_features = graph.run(x.numpy())
    scale = max(1.0, float(np.abs(features).max(initial=0.0)))
    return max(
        float(np.abs(got_logits - logits).max(initial=0.0)),
        float(np.abs(got_features - features).max(initial=0.0)) / scale,
    )
