"""The model bundle: ``models/MODEL/`` of a run plus its ``manifest.json``, loaded and verified.

:class:`Bundle` is the one inference path. Training writes ``predictions_{val,test}.csv``
through it, the evaluation stage calibrates and decides with its rules, and the service, the
command line, the Python API and the benchmarks predict with it:

* :meth:`Bundle.load` verifies every file of the bundle against the manifest (a changed,
  missing or unlisted file is refused), reads the card (:mod:`medlens.inference.card`), and
  loads ``model.safetensors`` (never ``torch.load``) or a hash-checked ``model.joblib``;
* :meth:`Bundle.preprocess` turns one stored image into the model input exactly as training did;
* :meth:`Bundle.raw_proba` gives the model's own probabilities (what predictions_*.csv holds),
  :meth:`Bundle.predict_proba` the calibrated ones (:func:`medlens.evaluation.calibration.calibrate`
  with the card's temperature: the function the evaluation stage applies to the CSV);
* :meth:`Bundle.decide` is the one threshold rule (:func:`medlens.evaluation.metrics.predict`,
  the rule comparison.json's metrics count), :meth:`Bundle.finding` names it;
* :meth:`Bundle.uncertainty` scores doubt and applies the card's abstention rule;
* :meth:`Bundle.scope` says whether an input is inside what the model was made for (the
  out-of-distribution guard of :mod:`medlens.inference.ood`, on the features that
  :meth:`Bundle.raw_proba_and_features` returns with the probabilities);
* :meth:`Bundle.explain` gives Grad-CAM (deep, at the card's ``cam_layer``) or occlusion maps;
* :meth:`Bundle.segment` gives a segmentation model's class probabilities per voxel (sliding
  window, :mod:`medlens.inference.segment`); such a bundle has no feature tap, no MC dropout and
  no out-of-distribution guard (its card says ``ood: null``).

A loaded bundle answers its forward passes (and MC dropout's draws, where the network allows)
through ONNX graphs exported at load (:meth:`Bundle.export_graphs`, :mod:`medlens.inference.graph`),
each kept only when it equals PyTorch within 1e-5; training's in-memory bundle answers with PyTorch.

Concurrency: the network stays in eval mode and runs under ``torch.no_grad``; MC dropout uses a
private copy, Grad-CAM a per-call copy, so concurrent callers never see each other's state; an
ONNX Runtime session may be run from several threads.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medlens.data.quantiles import percentiles
from medlens.errors import ChecksumError, MedlensError
from medlens.inference import uncertainty as unc
from medlens.inference.card import ModelCard, read_card
from medlens.inference.graph import InferenceGraph, export_graph, network_with_features
from medlens.inference.ood import UNCHECKED, Guard, Scope
from medlens.runs import RunDir, read_json

log = logging.getLogger(__name__)

OCCLUSION_GRID = 8
"""Occlusion hides one cell of an 8 x 8 (x 8) grid at a time (no overlap)."""


@dataclass(frozen=True)
class Doubt:
    """How sure the model is about one input, and whether it refers the case to a person."""

    uncertainty: float
    method: str
    abstain: bool
    reason: str | None


class Bundle:
    """A loaded model: its card, its network or estimator, and the rules to answer with them."""

    def __init__(
        self,
        card: ModelCard,
        *,
        name: str | None = None,
        net: Any = None,
        estimator: Any = None,
        weights_sha256: str = "",
        weights: Path | None = None,
        uncertainty: str | None = None,
        guard: Guard | None = None,
    ):
        if (net is None) == (estimator is None):
            raise ValueError("a bundle holds either a network or an estimator")
        self.card = card
        self.guard = guard
        self.name = name or card.name
        self.net = net
        self.estimator = estimator
        self.weights_sha256 = weights_sha256
        self.weights = weights  # the weights file it was loaded from (None: built in memory by training)
        self.graph: InferenceGraph | None = None  # plain forward passes through ONNX Runtime (:meth:`export_graphs`)
        self.draws_graph: InferenceGraph | None = None  # MC dropout's plain output and draws in one graph
        self.abstention = _abstention_rule(card, uncertainty)
        self._mc = None
        segmenter = card.task == "segmentation"
        self._tap = _FeatureTap(net) if net is not None and not segmenter else None
        if net is not None:
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            if card.dims == 2:  # oneDNN's channels-last kernels: cnn-small at 224 px 1.8 ms instead of 3.7 per image
                import torch

                net.to(memory_format=torch.channels_last)
            if not segmenter and unc.needs_samples(self.abstention.method) and unc.has_dropout(net):
                self._mc = unc.MCDropout(net, self._example_input())

    def export_graphs(self) -> None:
        """Answer forward passes through ONNX Runtime from now on (:mod:`medlens.inference.graph`):
        the plain pass and, with MC dropout that runs the layers before its first dropout once, the
        draws' pass; each kept only when equal to PyTorch's within the graph tolerance. A
        segmentation network keeps PyTorch (its sliding window)."""
        if self.net is None or self.card.task == "segmentation":
            return
        example = self._example_input()
        self.graph = export_graph(network_with_features(self.net), example, name=self.name)
        if self._mc is not None and self._mc.expands:
            draws = self._mc.exportable(seed=self.card.seed).eval()
            self.draws_graph = export_graph(draws, example, name=f"{self.name} (MC dropout draws)")

    def trained_network(self) -> Any:
        """A new copy of the network as trained (the registry's build with the weights file; no
        BatchNorm folding, default memory format): what plain PyTorch code would run."""
        if self.net is None or self.weights is None:
            raise MedlensError(f"{self.name}: no network weights file to build the trained network from")
        return build_network(self.card, self.weights)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, model: str | None = None, *, uncertainty: str | None = None) -> "Bundle":
        """Load model ``model`` of the run ``run_dir`` (default: the only one, or the best by
        validation AUC in comparison.json) after verifying its files against manifest.json.

        ``uncertainty`` overrides the uncertainty method (e.g. ``"max_prob"``: one forward pass);
        it must agree with the card's validated abstention rule when there is one.
        """
        run = RunDir(run_dir)
        if not run.root.is_dir():
            raise MedlensError("no such run directory", run.root)
        name = choose_model(run, model)
        verify_bundle(run, name)
        model_dir = run.model(name)
        card = read_card(model_dir.info)
        weights = model_dir.root / card.weights_file
        if not weights.is_file():
            raise MedlensError(f"{card.kind} model without its weights file {card.weights_file}", model_dir.root)
        sha = read_json(run.manifest)["files"][weights.relative_to(run.root).as_posix()]["sha256"]
        guard = Guard.load(model_dir.root, card.ood, modality=card.modality) if card.ood else None
        common = {"name": name, "weights_sha256": sha, "weights": weights, "uncertainty": uncertainty, "guard": guard}
        if card.kind == "deep":
            bundle = cls(card, net=inference_network(card, weights), **common)
            bundle.export_graphs()
            return bundle
        from medlens.models.classical.persistence import load_estimator

        return cls(card, estimator=load_estimator(weights, sha), **common)

    @property
    def kind(self) -> str:
        return self.card.kind

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)

    # -- input -----------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, *, name: str = "input") -> np.ndarray:
        """One stored image (C, ...) in native units -> the model input, exactly as in training
        (:func:`medlens.data.arrays.load_arrays` with the card's size, channels and steps).
        A blank image, or one that preprocessing makes constant, is refused naming the step."""
        from medlens.data.arrays import load_arrays
        from medlens.inference.preprocess import OneImage, check_image

        c = self.card
        if c.task == "segmentation":
            from medlens.inference.segment import segmentation_input

            x = segmentation_input(
                image, channels=c.in_channels, preprocessing=c.preprocessing, dims=c.dims, origin=name
            )
            check_image(x, image, c.preprocessing, c.dims, name)
            return x
        one = OneImage(image, c.dims, c.task, len(c.class_names), c.modality)
        x, _ = load_arrays(
            one, size=c.img_size, channels=c.in_channels, preprocessing=c.preprocessing, show_progress=False
        )
        check_image(x[0], image, c.preprocessing, c.dims, name)
        return x[0]

    def preprocess_dataset(self, dataset: Any, ids: list[str]) -> np.ndarray:
        """Model inputs (N, C, ...) for samples ``ids`` of ``dataset`` (training's loader and checks)."""
        from medlens.inference.preprocess import load_inputs

        c = self.card
        x, _ = load_inputs(dataset, ids, size=c.img_size, channels=c.in_channels, preprocessing=c.preprocessing)
        return x

    # -- output ----------------------------------------------------------------------------------
    def segment(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (K, *spatial) float32 (softmax; sliding window over patches of the
        card's ``patch_size``, averaged over the flips of its ``mirror_axes``) for one model input
        ``x`` (C, *spatial) of a segmentation model. The label map is their argmax over K."""
        if self.task != "segmentation":
            raise MedlensError(f"model '{self.name}' is not a segmentation model (task '{self.task}')")
        from medlens.inference.segment import sliding_window_proba

        x = np.asarray(x, dtype=np.float32)
        if x.ndim != self.card.dims + 1 or x.shape[0] != self.card.in_channels:
            raise MedlensError(
                f"model '{self.name}' takes ({self.card.in_channels}, {self.card.dims} spatial axes) inputs, "
                f"not {tuple(x.shape)}"
            )
        if self.estimator is not None:  # a classical per-pixel model sees the whole image
            return np.asarray(self.estimator.predict_proba_image(x), dtype=np.float32)
        assert self.card.patch_size is not None  # the card requires it for segmentation networks
        return sliding_window_proba(self.net, x, self.card.patch_size, self.card.mirror_axes)

    def raw_proba(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """The model's own probabilities (N, K) for model inputs ``x`` (N, C, ...): float64,
        softmax (sigmoid per label for multi-label) of the logits, or the estimator's columns in
        class-index order. predictions_*.csv holds these."""
        return self.raw_proba_and_features(x, batch_size=batch_size, features=False)[0]

    def raw_proba_and_features(
        self, x: np.ndarray, *, batch_size: int = 256, features: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`raw_proba` and, from the same pass, the features (N, D) the classifier reads:
        the input of the network's last linear layer, or what a classical pipeline computes
        before its final estimator (None when ``features`` is False)."""
        x = np.asarray(x, dtype=np.float32)
        if self.estimator is not None:
            return self._classical_proba(x, features)
        parts, feats = [], []
        for i in range(0, len(x), batch_size):
            logits, f = self._forward(x[i : i + batch_size], features)
            parts.append(logits_to_probs(logits, self.task))
            if f is not None:
                feats.append(f)
        probs = np.concatenate(parts) if parts else np.zeros((0, self.card.num_outputs))
        return probs, (np.concatenate(feats) if feats else None)

    def _forward(self, x: np.ndarray, features: bool) -> tuple[Any, np.ndarray | None]:
        """One plain forward pass of a batch: the logits (a torch tensor) and, when ``features``,
        the head's input (N, D) float64; through the exported graph when there is one."""
        import torch

        if self.graph is not None:
            logits, f = self.graph.run(x)
            return torch.from_numpy(logits), (f.astype(np.float64) if features else None)
        assert self._tap is not None  # every network bundle has its tap
        self._tap.want(features)
        try:
            with torch.no_grad():
                logits = self.net(self._tensor(x))
            return logits, (self._tap.take() if features else None)
        finally:
            self._tap.want(False)

    def _classical_proba(self, x: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from sklearn.pipeline import Pipeline

        from medlens.models.classical.predict import predict_proba_classical

        estimator, f = self.estimator, None
        if features:
            if not isinstance(estimator, Pipeline):
                raise MedlensError(f"classical model '{self.name}' is not a feature pipeline: no features to check")
            f = np.asarray(estimator[:-1].transform(x), dtype=np.float64)
            estimator, x = estimator[-1], f
        probs = predict_proba_classical(estimator, x, self.task, n_classes=self.card.n_classes)
        return np.asarray(probs, dtype=np.float64), f

    @property
    def feature_source(self) -> str:
        """Where :meth:`raw_proba_and_features` takes its features from (recorded in the card)."""
        if self.estimator is not None:
            return "classical pipeline before " + type(self.estimator[-1]).__name__
        assert self._tap is not None
        return f"input of the network's last linear layer ({self._tap.layer})"

    def scopes(self, images: Sequence[np.ndarray], x: np.ndarray, features: np.ndarray | None) -> list[Scope]:
        """Whether each input (``images`` as read, ``x`` (N, ...) their model inputs, ``features``
        (N, D)) is inside what the model was made for; unchecked for bundles trained before the
        guard existed."""
        if self.guard is None or features is None:
            return [UNCHECKED] * len(images)
        return self.guard.check_batch(images, x, features)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities (the card's temperature, chosen on validation)."""
        from medlens.evaluation.calibration import calibrate

        return calibrate(probs, self.card.temperature, self.task)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K): what every answer of medlens reports."""
        return self.calibrate(self.raw_proba(x))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Decisions for calibrated ``probs`` (N, K): binary ``p1 > threshold`` (the card's
        threshold, else 0.5), multi-label each label ``> threshold``, else argmax."""
        from medlens.evaluation.metrics import predict

        return predict(probs, self.task, self.card.decision_threshold)

    def finding(self, probs: np.ndarray) -> tuple[str, int, float]:
        """(finding, class index to explain, confidence) for one row of calibrated probabilities.

        Single-label: the decided class and its probability. Multi-label: the positive labels
        joined by "|" ("none" if none), the most probable label to explain, and the least sure
        label's max(p, 1 - p) as confidence.
        """
        probs = np.asarray(probs, dtype=np.float64)
        decided = self.decide(probs[None])[0]
        if self.task == "multilabel":
            finding = "|".join(c for c, d in zip(self.class_names, decided) if d) or "none"
            return finding, int(np.argmax(probs)), float(np.min(np.maximum(probs, 1 - probs)))
        index = int(decided)
        return self.class_names[index], index, float(probs[index])

    def probe(self, x: np.ndarray, *, features: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """What an answer needs from the network for model inputs ``x`` (N, C, ...), in one pass:
        the raw probabilities (N, K) of :meth:`raw_proba`, the features (N, D) of
        :meth:`raw_proba_and_features` (None unless ``features``), and the calibrated
        probabilities of the uncertainty draws (S, N, K) when the method needs them (else None).

        With MC dropout the plain output is the draws' pass with a mask of ones (the layers
        before the first dropout run once for all); with test-time augmentation it is the
        identity view. Equal to the separate calls within float rounding (1e-6)."""
        if self.net is None or not unc.needs_samples(self.abstention.method):
            return (*self.raw_proba_and_features(x, features=features), None)
        if self._mc is not None and not self._mc.expands:  # the whole input repeated, in chunks: separate calls
            raw, feats = self.raw_proba_and_features(x, features=features)
            xt = self._tensor(x)
            return raw, feats, self._calibrated(self._mc.logits(xt, seed=self.card.seed))

        if self.draws_graph is not None:  # rows per input: the plain output, then the draws
            import torch

            assert self._mc is not None
            flat, all_feats = self.draws_graph.run(x)
            rows = 1 + self._mc.passes
            logits = torch.from_numpy(flat).reshape(len(x), rows, -1).transpose(0, 1)
            feats = all_feats[::rows].astype(np.float64) if features else None
            return logits_to_probs(logits[0], self.task), feats, self._calibrated(logits[1:])
        if self._mc is None:  # test-time augmentation: every view in one batched pass, the identity first
            views = unc.tta_views(self._tensor(x))
            view_logits, view_feats = self._forward(views.numpy(), features)
            logits = view_logits.reshape(x.ndim - 1, len(x), -1)  # the identity and a flip per spatial axis
            feats = view_feats[: len(x)] if view_feats is not None else None
            return logits_to_probs(logits[0], self.task), feats, self._calibrated(logits)
        assert self._tap is not None
        self._tap.want(features)
        try:
            logits = self._mc.logits(self._tensor(x), seed=self.card.seed, plain=True)
            feats = self._tap.take() if features else None
        finally:
            self._tap.want(False)
        if feats is not None and len(feats) != len(x):  # the plain rows: the first of each input's
            feats = feats[:: len(logits)]
        return logits_to_probs(logits[0], self.task), feats, self._calibrated(logits[1:])

    def _calibrated(self, draws: Any) -> np.ndarray:
        """Calibrated probabilities (S, N, K) of draws' logits (S, N, K), all rows at once."""
        s, n = draws.shape[:2]
        return self.calibrate(logits_to_probs(draws.reshape(s * n, -1), self.task)).reshape(s, n, -1)

    @staticmethod
    def _tensor(x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def uncertainty(
        self, x: np.ndarray, probs: np.ndarray, confidences: np.ndarray, *, samples: np.ndarray | None = None
    ) -> list[Doubt]:
        """Uncertainty of model inputs ``x`` (N, C, ...) with calibrated ``probs`` (N, K) and the
        findings' ``confidences`` (N,), and the abstention rule's verdict for each. The draws
        (MC dropout or test-time augmentation, when the method needs them; ``samples`` when
        :meth:`probe` gave them already) come from one batched pass and do not depend on the
        batch: an input gets the same answer alone or with others."""
        probs = np.asarray(probs, dtype=np.float64)
        if samples is None and self.net is not None and unc.needs_samples(self.abstention.method):
            samples = self.probe(x, features=False)[2]
        multilabel = self.task == "multilabel"
        scores = unc.score(probs, self.abstention.method, samples=samples, multilabel=multilabel)
        doubts = []
        for u, confidence in zip(scores, confidences):
            abstain, reason = self.abstention.decide(float(u), float(confidence))
            doubts.append(Doubt(float(u), self.abstention.method, abstain, reason))
        return doubts

    def explain(self, x: np.ndarray, classes: np.ndarray | int) -> np.ndarray:
        """Heatmaps in [0, 1] with the inputs' spatial shape for a batch ``x`` (N, C, ...):
        Grad-CAM at the card's ``cam_layer`` (deep), else occlusion of an 8-cell grid per axis."""
        x = np.asarray(x, dtype=np.float32)
        classes = np.broadcast_to(np.asarray(classes), (len(x),))
        if self.net is not None and self.card.cam_layer:
            import torch

            from medlens.explain.cam import grad_cam

            net = copy.deepcopy(self.net)  # MONAI leaves hooks on the module: never on the shared one
            for p in net.parameters():
                p.requires_grad_(True)
            maps = grad_cam(
                net, torch.from_numpy(np.ascontiguousarray(x)), target_layer=self.card.cam_layer, class_index=classes
            )
        else:
            from medlens.explain.cam import occlusion_sensitivity

            patch = max(2, min(x.shape[2:]) // OCCLUSION_GRID)
            maps = occlusion_sensitivity(self.raw_proba, x, class_index=classes, patch=patch, stride=patch)
        return np.stack([_fit_shape(m, x.shape[2:]) for m in maps])

    @property
    def explanation_method(self) -> str:
        return "grad-cam" if self.net is not None and self.card.cam_layer else "occlusion"

    def _example_input(self) -> Any:
        return _example_input(self.card)


class _FeatureTap:
    """Keeps the input of a network's head (its last linear layer: the classifier's features) per thread,
    so that concurrent callers of one shared network each read their own batch's features."""

    def __init__(self, net: Any):
        from medlens.models.deep.encoder import head_name

        self.layer = head_name(net)
        self._local = threading.local()
        net.get_submodule(self.layer).register_forward_pre_hook(self._keep)

    def __deepcopy__(self, memo: dict) -> "_FeatureTap":
        return self  # copies of the network (MC dropout, Grad-CAM) report to the same tap

    def _keep(self, _module: Any, inputs: tuple) -> None:
        if getattr(self._local, "wanted", False):  # only a caller that asked pays for the copy
            self._local.value = inputs[0].detach().flatten(1).double().cpu().numpy()

    def want(self, wanted: bool) -> None:
        """Keep (or stop keeping) features of this thread's forward passes."""
        self._local.wanted = wanted
        self._local.value = None

    def take(self) -> np.ndarray:
        value = getattr(self._local, "value", None)
        if value is None:
            raise MedlensError("the network's last linear layer was not reached: no features")
        self._local.value = None
        return value


# -- helpers shared by every stage -------------------------------------------------------------------
def probabilities(logits: Any, task: str) -> Any:
    """Logits to probabilities (torch, float64 so rows sum to 1 within rounding; float32 on MPS):
    sigmoid per label for multi-label, softmax otherwise. Training's validation uses it too."""
    import torch

    z = logits.double() if logits.device.type != "mps" else logits.float()
    return torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)


def logits_to_probs(logits: Any, task: str) -> np.ndarray:
    """:func:`probabilities` as a float64 numpy array."""
    return probabilities(logits.detach().cpu(), task).double().numpy()


def _example_input(card: ModelCard) -> Any:
    """Zeros shaped like one model input of ``card`` (1, C, ...)."""
    import torch

    size = (card.patch_size if card.task == "segmentation" else card.img_size) or 32
    spatial = [int(v) for v in size] if isinstance(size, list) else [int(size)] * card.dims
    return torch.zeros(1, card.in_channels, *spatial)


def build_network(card: ModelCard, weights: Path | None = None) -> Any:
    """The card's network from the registry, with ``weights`` (safetensors) loaded strictly."""
    from medlens.models.deep.weights import load_weights
    from medlens.models.registry import get_model

    spec = get_model(card.model)
    if spec.kind != "deep":
        raise MedlensError(f"the card says deep but '{spec.name}' is a {spec.kind} model")
    size = card.patch_size if card.task == "segmentation" else card.img_size
    net = spec.build(in_channels=card.in_channels, num_outputs=card.num_outputs, spatial_dims=card.dims, img_size=size)
    if weights is not None:
        load_weights(net, weights, strict=True)
    return net.eval()


FOLD_TOLERANCE = 1e-5
"""Largest difference allowed between the logits of the folded network and the trained one."""


def inference_network(card: ModelCard, weights: Path) -> Any:
    """The card's network for answering: :func:`build_network` with its BatchNorms folded into the
    convolutions (:mod:`medlens.models.deep.fusion`), kept only when its logits on seeded random
    inputs equal the unfolded network's within :data:`FOLD_TOLERANCE` (else the unfolded one)."""
    import torch

    from medlens.models.deep.fusion import fold_batchnorm

    net = build_network(card, weights)
    x = torch.rand(1, *_example_input(card).shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
        if not fold_batchnorm(net):
            return net
        difference = float((net(x) - expected).abs().max())
    if difference <= FOLD_TOLERANCE:
        return net
    log.warning(
        "%s: folded BatchNorm changes the logits by %.2g: answering with the unfolded network", card.name, difference
    )
    return build_network(card, weights)


def display_image(x: np.ndarray) -> np.ndarray:
    """A (C, H, W) model input as a 2D grey image in [0, 1] (channel mean, 0.5-99.5 percentile
    range): the one display rule of the service, the report's gallery and the PNG outputs."""
    grey = np.asarray(x, dtype=np.float32).mean(axis=0)
    lo, hi = percentiles(grey, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(grey)
    return np.clip((grey - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def heatmap_slice(x: np.ndarray, heat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(display image, heatmap) as matching 2D arrays for a model input (C, ...): for 3D the slice
    where the heatmap peaks (the middle slice without a heatmap)."""
    if x.ndim == 3:
        return display_image(x), heat
    if heat is None:
        return display_image(x[:, x.shape[1] // 2]), None
    k = int(np.argmax(heat.reshape(heat.shape[0], -1).max(axis=1)))
    return display_image(x[:, k]), heat[k]


def _fit_shape(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == tuple(shape):
        return heat
    from scipy.ndimage import zoom

    out = zoom(heat, [s / h for s, h in zip(shape, heat.shape)], order=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _abstention_rule(card: ModelCard, uncertainty: str | None) -> unc.AbstentionRule:
    default_method = "predictive_entropy" if card.kind == "deep" else "entropy"
    rule = unc.AbstentionRule.from_model_info(card.to_dict(), default_method)
    if uncertainty is not None and uncertainty != rule.method:
        if rule.validated:
            raise MedlensError(
                f"the model card's abstention threshold was chosen for '{rule.method}', not '{uncertainty}'"
            )
        rule = unc.AbstentionRule(method=unc.check_method(uncertainty))
    return rule


# -- choosing and verifying a bundle ---------------------------------------------------------------
def choose_model(run: RunDir, model: str | None) -> str:
    """The model to load: ``model``, the only one, or comparison.json's best (by validation AUC)."""
    names = run.trained_models()
    if model is not None:
        if model not in names:
            raise MedlensError(f"no model '{model}' in the run (models: {', '.join(names)})", run.root)
        return model
    if len(names) == 1:
        return names[0]
    if run.comparison.is_file():
        try:
            comparison = read_json(run.comparison)
        except (OSError, ValueError):
            raise MedlensError("comparison.json is not valid JSON", run.comparison) from None
        best = (comparison.get("best") or {}).get("model") if isinstance(comparison, dict) else None
        if best not in names and isinstance(comparison, dict):
            best = best_by_val_auc({n: e for n, e in (comparison.get("models") or {}).items() if n in names})
        if best in names:
            return str(best)
    raise MedlensError(
        f"the run holds {len(names)} models ({', '.join(names)}) and no comparison.json ranks them: "
        "choose one with --model",
        run.root,
    )


def best_by_val_auc(models: dict[str, dict[str, Any]]) -> str | None:
    """The model with the highest validation AUC among comparison.json entries (ties: the first
    name in alphabetical order). The evaluation stage records it as ``best``; loading reads that."""
    scores = {}
    for name, entry in models.items():
        v = ((entry or {}).get("metrics") or {}).get("val", {}).get("auc")
        v = v.get("value") if isinstance(v, dict) else v
        if isinstance(v, (int, float)) and np.isfinite(v):
            scores[name] = float(v)
    return sorted(scores, key=lambda n: (-scores[n], n))[0] if scores else None


def verify_bundle(run: RunDir, model: str) -> None:
    """Refuse a bundle whose files differ from manifest.json: changed, missing, or unknown files."""
    from medlens.manifest import TRAINING_STATE, artifact_files, verify_manifest

    if not run.manifest.is_file():
        raise ChecksumError("no manifest.json: refusing to load a model whose files cannot be verified", run.root)
    try:
        listed = read_json(run.manifest).get("files", {})
    except (OSError, ValueError):
        raise ChecksumError("manifest.json is not valid JSON", run.manifest) from None
    prefix, state = f"models/{model}/", f"models/{model}/{TRAINING_STATE}/"
    on_disk = {f for f in artifact_files(run.root) if f.startswith(prefix) and not f.startswith(state)}
    in_manifest = {f for f in listed if f.startswith(prefix) and not f.startswith(state)}
    problems = verify_manifest(run.root, sorted(on_disk | in_manifest))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ChecksumError(f"{problems[0]}{more}; refusing to load the model bundle")
