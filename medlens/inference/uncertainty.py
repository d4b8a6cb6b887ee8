"""How sure is the model about one input, and should it answer at all?

Stochastic draws (S forward passes whose spread measures the model's doubt):

* **MC dropout** (Gal & Ghahramani, 2016) for deep models that have dropout layers: a private
  copy of the network in eval mode (BatchNorm keeps its running statistics) whose dropout layers
  apply S seeded masks (:class:`MCDropout`). Draw s uses the same mask for every input, so an
  input gets the same answer alone or in any batch, and always the same answer.
* **Test-time augmentation** for deep models without dropout: the identity and a flip of each
  spatial axis (S = 1 + spatial dims).
* Classical models give one deterministic draw (their probabilities).

Uncertainty scores come from :func:`medlens.evaluation.selective.uncertainty_scores`
(``max_prob``, ``entropy``, ``margin`` need no draws; ``predictive_entropy``,
``mutual_information``, ``variance`` use them), so serving and the comparison stage that picks
the abstention threshold on validation compute the very same number.

Abstention (:class:`AbstentionRule`): when ``model.json`` holds ``abstention`` =
``{"method", "threshold", "target_risk"}`` (chosen on validation by the comparison stage), the
model abstains when the uncertainty exceeds the threshold. Without it a documented default
applies: abstain when the probability of the finding is below :data:`DEFAULT_MIN_CONFIDENCE`.
"""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.evaluation.selective import PROB_METHODS, SAMPLE_METHODS, UNCERTAINTY_METHODS, uncertainty_scores

DEFAULT_MIN_CONFIDENCE = 0.6
"""Default rule without a validated threshold: abstain when the finding's probability is below this."""
MC_PASSES = 20
MC_SEED = 0
MC_MASKS_KEPT = 64  # cached mask sets (seed, layer, input shape); the cache starts over beyond this
MC_CHUNK = 32  # rows (input copies) per forward pass when the whole input is repeated (bounds memory for 3D)
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # one mask value per channel


class _Draws(nn.Module):
    """:meth:`MCDropout.exportable`: the draws' network (a copy carrying the same mask hooks) with a feature tap."""

    mc: MCDropout

    def __init__(self, mc: MCDropout, seed: int):
        from medlens.models.deep.encoder import WithFeatures

        super().__init__()
        self.net = WithFeatures(copy.deepcopy(mc.net))
        self.seed = int(seed)
        self.mc = mc  # not a module: its hooks' state, which the copied network reads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.mc.drawing(len(x), seed=self.seed, plain=True):
            return self.net(x)


def has_dropout(net: nn.Module) -> bool:
    """Whether ``net`` has at least one dropout layer with a non-zero probability."""
    return any(isinstance(m, DROPOUT_TYPES) and float(getattr(m, "p", 0.0)) > 0 for m in net.modules())


def mc_dropout_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` in eval mode (the shared ``net`` is not touched)."""
    mc = copy.deepcopy(net).eval()
    for p in mc.parameters():
        p.requires_grad_(False)
    return mc


class MCDropout:
    """Seeded MC-dropout draws on a private copy of a network, the same for any batch.

    Each dropout layer stays in eval mode (an identity); a pre-hook multiplies its input by the
    mask of each draw, drawn from a generator seeded with (seed, layer), scaled by 1 / (1 - p) as
    dropout does, one value per element (``Dropout``) or per channel (``Dropout1d/2d/3d``). Rows
    ``i*S .. i*S+S-1`` are input i's S draws and draw s has one mask for every input: an input's
    answer does not depend on the batch it came in (batched prediction equals one at a time).

    The layers before the first dropout are deterministic, so they run once: the first dropout
    layer's hook repeats its input S times while it still has the caller's batch size (for
    cnn-small, 20 draws cost about one forward pass). Whether the network's forward allows this
    early expansion is checked once on ``example`` without masks (the draws must equal the plain
    output); when it does not (e.g. a forward that reshapes with the input's batch size), the
    whole input is repeated instead.
    """

    def __init__(self, net: nn.Module, example: torch.Tensor, *, passes: int = MC_PASSES):
        self.net = mc_dropout_copy(net)
        self.passes = int(passes)
        self._dropouts = [m for m in self.net.modules() if isinstance(m, DROPOUT_TYPES)]
        self._lock = threading.Lock()  # the hooks read this call's state: one caller at a time
        self._batch: int | None = None  # the caller's batch size during an expanded call
        self._seed: int | None = None  # masks on (the seed of this call) or off (None)
        self._rows = self.passes  # rows per input in this call: the draws, and the plain output if asked
        self._masks: dict[tuple, torch.Tensor] = {}  # (seed, layer, shape, dtype, rows, p) -> scaled masks
        for index, m in enumerate(self._dropouts):
            m.register_forward_pre_hook(self._hook(index))
        self.expands = self._check(net, example)

    def _hook(self, index: int):
        def apply(module: nn.Module, args: tuple):
            x = args[0]
            if self._batch is not None and x.shape[0] == self._batch:
                x = x.repeat_interleave(self._rows, dim=0)
            if self._seed is not None:
                x = x * self._mask(module, index, x).repeat(x.shape[0] // self._rows, *[1] * (x.ndim - 1))
            return (x, *args[1:])

        return apply

    def _mask(self, module: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
        """The masks (rows per input, ...) of dropout layer ``index`` for rows shaped like ``x``'s,
        scaled: the S draws, after a mask of ones when the call also wants the plain output."""
        p = float(module.p)  # type: ignore[arg-type]
        if x.shape[0] % self._rows:
            raise MedlensError(f"MC dropout: {x.shape[0]} rows are not whole groups of {self._rows}")
        shape = (x.shape[1], *[1] * (x.ndim - 2)) if isinstance(module, CHANNEL_DROPOUT) else tuple(x.shape[1:])
        shape = tuple(int(v) for v in shape)  # plain ints also while the exporter traces (it gives sizes as tensors)
        key = (int(self._seed or 0), index, shape, x.dtype, self._rows, p)
        keep = self._masks.get(key)
        if keep is None:  # drawn once per seed, layer and shape: the same masks every call
            generator = torch.Generator().manual_seed(int(self._seed or 0) * 1000 + index)
            keep = (torch.rand((self.passes, *shape), generator=generator) >= p).to(x.dtype) / max(1.0 - p, 1e-12)
            if self._rows > self.passes:
                keep = torch.cat([torch.ones((1, *shape), dtype=x.dtype), keep])
            if len(self._masks) >= MC_MASKS_KEPT:
                self._masks.clear()
            self._masks[key] = keep
        return keep

    @torch.no_grad()
    def _check(self, net: nn.Module, example: torch.Tensor) -> bool:
        self._batch = len(example)
        try:
            out = self.net(example)
            expected = net(example).repeat_interleave(self.passes, dim=0)
            return tuple(out.shape) == tuple(expected.shape) and bool(torch.allclose(out, expected, atol=1e-4))
        except Exception:  # noqa: BLE001 - probing: any failure means "repeat the whole input instead"
            return False
        finally:
            self._batch = None

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, seed: int = MC_SEED, plain: bool = False) -> torch.Tensor:
        """Logits of ``passes`` dropout draws for a batch ``x`` (N, C, ...): (S, N, K); seeded.
        ``plain``: (1 + S, N, K), [0] the network without dropout, from the same pass (the layers
        before the first dropout run once for both)."""
        n, rows = len(x), self.passes + int(plain)
        with self.drawing(n, seed=seed, plain=plain):
            if self.expands:
                out = self.net(x)
            else:  # sample i's rows are i*R .. i*R+R-1; chunks hold whole samples
                reps = x.repeat_interleave(rows, dim=0)
                chunk = rows * max(1, MC_CHUNK // rows)
                out = torch.cat([self.net(reps[i : i + chunk]) for i in range(0, len(reps), chunk)])
        return out.reshape(n, rows, -1).transpose(0, 1)

    @contextmanager
    def drawing(self, n: int, *, seed: int, plain: bool):
        """The hooks' state for one call on a batch of ``n`` (one caller at a time)."""
        with self._lock:
            self._seed, self._rows = int(seed), self.passes + int(plain)
            self._batch = n if self.expands else None
            try:
                yield
            finally:
                self._batch = self._seed = None
                self._rows = self.passes

    def exportable(self, *, seed: int) -> nn.Module:
        """A module for :func:`medlens.inference.graph.export_graph`: for a batch (N, C, ...) the
        plain output and the ``passes`` draws of ``seed``, (N * (1 + S), K) rows in input order,
        and the head's input of every row. Only for an expanding network (:attr:`expands`)."""
        if not self.expands:
            raise MedlensError("MC dropout repeats the whole input for this network: no single graph for its draws")
        return _Draws(self, seed)


def tta_views(x: torch.Tensor) -> torch.Tensor:
    """The test-time augmentation views of a batch (N, C, ...) stacked along the batch axis: the
    identity, then a flip of each spatial axis ((1 + spatial dims) * N rows)."""
    return torch.cat([x] + [torch.flip(x, dims=(axis,)) for axis in range(2, x.ndim)])


def needs_samples(method: str) -> bool:
    """Whether ``method`` is computed from stochastic draws (else from one set of probabilities)."""
    check_method(method)
    return method in SAMPLE_METHODS


def check_method(method: str) -> str:
    if method not in UNCERTAINTY_METHODS:
        raise MedlensError(f"unknown uncertainty method '{method}' (known: {', '.join(UNCERTAINTY_METHODS)})")
    return method


def score(probs: np.ndarray, method: str, *, samples: np.ndarray | None = None, multilabel: bool = False) -> np.ndarray:
    """Per-case uncertainty (N,) for probabilities (N, K) and optional draws (S, N, K).

    A sample-based method without draws (a classical model) uses ``probs`` as the single draw,
    so ``predictive_entropy`` equals ``entropy`` and ``mutual_information`` / ``variance`` are 0.
    """
    check_method(method)
    probs = np.asarray(probs, dtype=np.float64)
    if method in SAMPLE_METHODS and samples is None:
        samples = probs[None]
    return uncertainty_scores(probs, method, samples if method in SAMPLE_METHODS else None, multilabel=multilabel)


# -- abstention ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AbstentionRule:
    """When the model refers a case instead of answering.

    ``threshold`` set: abstain when the uncertainty (``method``) is above it (validated rule from
    ``model.json``; a threshold of -inf refers everything). Otherwise: abstain when the probability
    of the finding is below ``min_confidence`` (the default rule).
    """

    method: str
    threshold: float | None = None
    target_risk: float | None = None
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    @classmethod
    def from_model_info(cls, info: dict[str, Any], default_method: str) -> "AbstentionRule":
        """The rule in ``model.json`` (``abstention``), else the default rule with ``default_method``."""
        spec = info.get("abstention") or None
        if not spec:
            return cls(method=check_method(default_method))
        if not isinstance(spec, dict) or "method" not in spec or "threshold" not in spec:
            raise MedlensError("model.json 'abstention' must hold 'method' and 'threshold'")
        threshold = spec["threshold"]
        threshold = -math.inf if threshold is None else float(threshold)  # strict JSON writes -inf as null
        target = spec.get("target_risk")
        return cls(
            method=check_method(str(spec["method"])),
            threshold=threshold,
            target_risk=None if target is None else float(target),
        )

    @property
    def validated(self) -> bool:
        return self.threshold is not None

    def decide(self, uncertainty: float, confidence: float) -> tuple[bool, str | None]:
        """(abstain, reason naming the rule that fired, or None)."""
        if self.threshold is not None:
            if uncertainty > self.threshold:
                risk = f" for a target risk of {self.target_risk:g}" if self.target_risk is not None else ""
                return True, (
                    f"uncertainty ({self.method}) {uncertainty:.4f} > {self.threshold:.4f}, "
                    f"the threshold chosen on validation{risk}"
                )
            return False, None
        if confidence < self.min_confidence:
            return True, (
                f"probability of the finding {confidence:.3f} < {self.min_confidence:g} "
                "(default rule: no validated abstention threshold in model.json)"
            )
        return False, None


__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "PROB_METHODS",
    "SAMPLE_METHODS",
    "AbstentionRule",
    "has_dropout",
    "mc_dropout_copy",
    "MCDropout",
    "tta_views",
    "needs_samples",
    "score",
]
