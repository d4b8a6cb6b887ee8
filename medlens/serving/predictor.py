"""The predictor: one verified model bundle, ready to answer for one image at a time.

:meth:`Predictor.from_run` picks a model of a run directory (the only one, else the best by
validation AUC in ``comparison.json``), then, before anything is loaded, checks every file of
the bundle (``models/MODEL/``) against the run's ``manifest.json``: a changed, missing or
unlisted file is refused with a :class:`~medlens.errors.ChecksumError` naming it. Deep weights
are read from ``model.safetensors`` only (never ``torch.load``); a classical ``model.joblib`` is
unpickled only by :func:`medlens.training.classical.load_estimator`, which checks its sha256 again.

Inputs (:meth:`~Predictor.predict_path`, :meth:`~Predictor.predict_bytes`,
:meth:`~Predictor.predict_dicom`, :meth:`~Predictor.predict_files`,
:meth:`~Predictor.predict_array`) are read with :mod:`medlens.data.imageio` and
:mod:`medlens.data.dicom`, checked against the model (spatial dimensions, channels, modality),
and preprocessed with exactly the training pipeline recorded in ``model.json``
(:func:`medlens.data.arrays.load_arrays` on the one image, the function training used). The answer is a
:class:`PredictionResult`: the :class:`~medlens.serving.prediction.Prediction` (temperature-scaled
probabilities, finding, confidence, uncertainty, abstention), the source DICOM datasets, a
display image and the model input.

Concurrency: the network stays in eval mode and is only ever run under ``torch.no_grad``;
MC dropout runs on a private copy whose dropout layers are on (seeded under a lock), Grad-CAM
on a per-call copy (MONAI's hooks stay on the module they were registered on), so concurrent
requests never see each other's state.
"""

from __future__ import annotations

import copy
import hashlib
import os
import secrets
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom

from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.errors import BadInputError, ChecksumError, MedlensError
from medlens.runs import ModelDir, RunDir, read_json, sha256_file
from medlens.serving import uncertainty as unc
from medlens.serving.prediction import Prediction, SourceInfo

PSEUDONYM_KEY_ENV = "MEDLENS_PSEUDONYM_KEY"
XRAY_FAMILY = {"DX", "CR", "RG", "DR", "XR", "PX"}  # projection radiographs: one family for the modality check
UNKNOWN_MODALITIES = {"", "OT"}
OCCLUSION_PATCHES = 8  # the occlusion patch is about 1/8 of the image side


class UnsupportedMediaError(MedlensError):
    """Uploaded content that is no image medlens reads (not DICOM, NIfTI, PNG or JPEG); REST answers 415."""


@dataclass
class PredictionResult:
    """A prediction with what it was computed from.

    ``sources``: the DICOM datasets of the input (empty for other formats); ``display_image``:
    2D float in [0, 1] in the model input's geometry (the middle slice for 3D), for overlays;
    ``model_input``: the preprocessed array (C, H, W) or (C, D, H, W) the model saw.
    """

    prediction: Prediction
    sources: list[pydicom.Dataset] = field(default_factory=list)
    display_image: np.ndarray | None = None
    model_input: np.ndarray | None = None

    def heatmap_slice(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(display image, heatmap) as matching 2D arrays: for 3D, the slice where the heatmap peaks."""
        heat = self.prediction.heatmap
        x = self.model_input
        if heat is None or heat.ndim == 2 or x is None:
            return self.display_image, heat
        k = int(np.argmax(heat.reshape(heat.shape[0], -1).max(axis=1)))
        return display_image(x[:, k]), heat[k]

    def overlay_png(self) -> bytes:
        """The heatmap over the display image as PNG bytes (the grey image alone without a heatmap)."""
        from medlens.serving.overlay import overlay_png

        image, heat = self.heatmap_slice()
        return overlay_png(image, heat)


@dataclass
class _Input:
    """An image read from somewhere, before the model's checks and preprocessing."""

    array: np.ndarray
    source: SourceInfo
    name: str  # names the input in error messages
    sources: list[pydicom.Dataset] = field(default_factory=list)


class Predictor:
    """A loaded, verified model bundle. Build it with :meth:`from_run`."""

    def __init__(
        self,
        model_dir: ModelDir,
        info: dict[str, Any],
        *,
        weights_sha256: str,
        net: Any = None,
        estimator: Any = None,
        uncertainty: str | None = None,
        pseudonym_key: str | None = None,
    ):
        self.model_dir = model_dir
        self.info = info
        self._sha256 = weights_sha256
        self.net = net
        self.estimator = estimator
        self.kind = info["kind"]
        self.task = str(info["task"])
        self.class_names = [str(c) for c in info["class_names"]]
        self.dims = int(info["dims"])
        self.in_channels = int(info.get("in_channels") or 1)
        self.modality = info.get("modality")
        self.temperature = float(info.get("temperature") or 1.0)
        self.decision_threshold = (info.get("thresholds") or {}).get("decision")
        self.cam_layer = info.get("cam_layer")
        self.seed = int(info.get("seed") or 0)
        default_method = "predictive_entropy" if self.kind == "deep" else "entropy"
        rule = unc.AbstentionRule.from_model_info(info, default_method)
        if uncertainty is not None and uncertainty != rule.method:
            if rule.validated:
                raise MedlensError(
                    f"model.json's abstention threshold was chosen for '{rule.method}', not '{uncertainty}'",
                    model_dir.info,
                )
            rule = unc.AbstentionRule(method=unc.check_method(uncertainty))
        self.abstention = rule
        self._pseudonym_key = pseudonym_key or os.environ.get(PSEUDONYM_KEY_ENV) or secrets.token_hex(16)
        self._mc = None
        if net is not None:
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            if unc.needs_samples(rule.method) and unc.has_dropout(net):
                self._mc = unc.MCDropout(net, self._example_input())

    def _example_input(self):
        """A zero batch of one input of the model's shape (for checks at load time)."""
        import torch

        size = self.info.get("img_size") or 32
        spatial = [int(v) for v in size] if isinstance(size, (list, tuple)) else [int(size)] * self.dims
        return torch.zeros(1, self.in_channels, *spatial)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        model: str | None = None,
        *,
        uncertainty: str | None = None,
        pseudonym_key: str | None = None,
    ) -> "Predictor":
        """Load model ``model`` of the run directory ``run_dir`` after verifying its files.

        ``model`` defaults to the only model, or the best by validation AUC in comparison.json.
        ``uncertainty`` overrides the uncertainty method (e.g. ``"max_prob"``: one forward pass);
        it must agree with model.json's validated abstention rule when there is one.
        ``pseudonym_key`` keys patient pseudonyms (default: $MEDLENS_PSEUDONYM_KEY, else random).
        """
        run = RunDir(run_dir)
        if not run.root.is_dir():
            raise MedlensError("no such run directory", run.root)
        name = choose_model(run, model)
        model_dir = run.model(name)
        verify_bundle(run, name)
        info = read_json(model_dir.info)
        kind = info.get("kind")
        manifest_files = read_json(run.manifest)["files"]
        if kind == "deep":
            weights = model_dir.weights
            if not weights.is_file():
                raise MedlensError("deep model without model.safetensors", model_dir.root)
            net = _build_network(info, weights)
            return cls(
                model_dir,
                info,
                weights_sha256=manifest_files[_rel(run, weights)]["sha256"],
                net=net,
                uncertainty=uncertainty,
                pseudonym_key=pseudonym_key,
            )
        if kind == "classical":
            from medlens.training.classical import load_estimator

            path = model_dir.estimator
            if not path.is_file():
                raise MedlensError("classical model without model.joblib", model_dir.root)
            expected = manifest_files[_rel(run, path)]["sha256"]
            estimator = load_estimator(path, expected)
            return cls(
                model_dir,
                info,
                weights_sha256=expected,
                estimator=estimator,
                uncertainty=uncertainty,
                pseudonym_key=pseudonym_key,
            )
        raise MedlensError(f"unknown model kind '{kind}' in model.json", model_dir.info)

    @property
    def model_id(self) -> str:
        """The model's name in its run (the bundle folder name)."""
        return self.model_dir.name

    @property
    def model_sha256(self) -> str:
        """sha256 of the weights file (model.safetensors or model.joblib), as in the manifest."""
        return self._sha256

    # -- public entry points ---------------------------------------------------------------
    def predict_path(self, path: str | Path, *, explain: bool = False) -> PredictionResult:
        """Predict for an image file (PNG, JPEG, TIFF, NIfTI, DICOM) or a one-series DICOM folder."""
        return self._predict(self._read_path(Path(path)), explain=explain)

    def predict_files(
        self, files: Sequence[str | Path], *, explain: bool = False, name: str | None = None
    ) -> PredictionResult:
        """Predict for the DICOM files of ONE series (any order)."""
        return self._predict(self._read_dicom_files([Path(f) for f in files], name=name), explain=explain)

    def predict_bytes(self, data: bytes, filename: str, *, explain: bool = False) -> PredictionResult:
        """Predict for uploaded bytes; the format is sniffed from the content (``filename`` only names it).

        Content that is not DICOM, NIfTI, PNG, JPEG or TIFF raises :class:`UnsupportedMediaError`.
        """
        suffix = sniff_suffix(data)
        if suffix is None:
            raise UnsupportedMediaError("not a supported image (expected DICOM, NIfTI, PNG or JPEG content)", filename)
        with tempfile.TemporaryDirectory(prefix="medlens-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                if suffix == ".dcm":
                    inp = self._read_dicom_files([path], name=filename, in_memory=True)
                else:
                    inp = self._read_path(path, name=filename)
            except MedlensError as e:
                if e.path is None or not e.path.startswith(tmp):
                    raise
                raise type(e)(e.problem, filename) from None  # name the upload, not the temporary file
        return self._predict(inp, explain=explain)

    def predict_dicom(self, datasets: Sequence[pydicom.Dataset], *, explain: bool = True) -> PredictionResult:
        """Predict for the datasets of one DICOM series (e.g. received by the DICOM node)."""
        if not datasets:
            raise MedlensError("no DICOM datasets to predict on")
        with tempfile.TemporaryDirectory(prefix="medlens-dicom-") as tmp:
            files = []
            for i, ds in enumerate(datasets):
                path = Path(tmp) / f"{i:05d}.dcm"
                _write_dataset(ds, path)
                files.append(path)
            inp = self._read_dicom_files(files, name=str(datasets[0].get("SeriesInstanceUID", "dicom")))
        inp.sources = list(datasets)
        return self._predict(inp, explain=explain)

    def predict_array(self, image: np.ndarray, *, explain: bool = False, source: SourceInfo) -> PredictionResult:
        """Predict for a channels-first array (C, H, W) or (C, D, H, W) in native units."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim not in (3, 4):
            raise MedlensError(f"expected a channels-first (C, H, W) or (C, D, H, W) array, got shape {image.shape}")
        return self._predict(_Input(image, source, name="array"), explain=explain)

    # -- reading ---------------------------------------------------------------------------
    def _read_path(self, path: Path, *, name: str | None = None) -> _Input:
        from medlens.data.dicom import has_dicm_marker
        from medlens.data.imageio import DICOM_EXTS, is_nifti_name, is_raster_name

        if not path.exists():
            raise MedlensError("file not found", path)
        if path.is_dir():
            from medlens.data.dicom import dicom_files

            files, _ = dicom_files(path)
            if not files:
                raise BadInputError("no DICOM files in folder", path)
            return self._read_dicom_files(files, name=name or str(path), source=path)
        lower = path.name.lower()
        if lower.endswith(DICOM_EXTS) or (
            not is_raster_name(lower) and not is_nifti_name(lower) and has_dicm_marker(path)
        ):
            return self._read_dicom_files([path], name=name)
        from medlens.data.imageio import read_image_file

        data = read_image_file(path)
        fmt = str(data.meta.get("format") or ("nifti" if is_nifti_name(lower) else path.suffix.lstrip("."))).lower()
        if fmt == "dicom":  # a DICOM file without the marker, found by imageio's fallback
            return self._read_dicom_files([path], name=name)
        source = SourceInfo(kind=fmt, input_sha256=sha256_file(path), modality=data.modality)
        return _Input(data.array, source, name=name or str(path))

    def _read_dicom_files(
        self, files: list[Path], *, name: str | None = None, source: Path | None = None, in_memory: bool = False
    ) -> _Input:
        """One series: the pixel volume via medlens.data.dicom, the headers as SR/overlay sources."""
        from medlens.data.dicom import read_series, read_series_folder

        if len(files) == 1 and source is None:
            data = read_series_folder(files[0])
        else:
            vol = read_series(files, source=source)
            data = _volume_image(vol)
        datasets = [_read_source(f, in_memory=in_memory) for f in files]
        ds0 = datasets[0]
        patient = str(ds0.get("PatientID", "") or "")
        info = SourceInfo(
            kind="dicom",
            input_sha256=_files_sha256(files),
            study_instance_uid=str(ds0.get("StudyInstanceUID", "")) or None,
            series_instance_uid=str(ds0.get("SeriesInstanceUID", "")) or None,
            sop_instance_uids=[str(d.get("SOPInstanceUID", "")) for d in datasets if d.get("SOPInstanceUID")],
            patient_pseudonym=_pseudonym(patient, self._pseudonym_key) if patient else None,
            modality=data.modality,
        )
        return _Input(data.array, info, name=name or str(source or files[0]), sources=datasets)

    # -- checks and preprocessing ------------------------------------------------------------
    def check_input(self, image: np.ndarray, modality: str | None, name: str | None = None) -> np.ndarray:
        """The image fitted to the model's spatial dimensions, or a one-line error why it cannot go in.

        A one-slice volume counts as a 2D image; channels must be the model's or convertible by
        :func:`medlens.data.arrays.convert_channels` (gray <-> RGB, done in :meth:`preprocess`).
        """
        arr = np.asarray(image, dtype=np.float32)
        dims = arr.ndim - 1
        if dims == 3 and self.dims == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
            dims = 2
        if dims != self.dims:
            what = f"a {dims}D {'volume' if dims == 3 else 'image'} {tuple(arr.shape[1:])}"
            raise MedlensError(f"{what} cannot go to model '{self.model_id}', which takes {self.dims}D images", name)
        if not _same_modality(modality, self.modality):
            raise MedlensError(
                f"the input is {modality} but model '{self.model_id}' was trained on {self.modality} images", name
            )
        c = arr.shape[0]
        if c != self.in_channels and not (c == 1 or (self.in_channels == 1 and c in (3, 4))):
            raise MedlensError(f"the input has {c} channels but model '{self.model_id}' takes {self.in_channels}", name)
        if not np.all(np.isfinite(arr)):
            raise BadInputError("the image holds NaN or infinite values", name)
        return arr

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Exactly the training preprocessing: :func:`medlens.data.arrays.load_arrays` on this one
        image with model.json's ``img_size``, ``in_channels`` and ``preprocessing``."""
        from medlens.data.arrays import load_arrays

        one = _OneImage(image, self.dims, self.task, len(self.class_names), self.modality)
        x, _ = load_arrays(
            one,
            size=self.info.get("img_size"),
            channels=self.in_channels,
            preprocessing=self.info.get("preprocessing"),
            show_progress=False,
        )
        return x[0]

    # -- the model -----------------------------------------------------------------------------
    def _predict(self, inp: _Input, *, explain: bool) -> PredictionResult:
        arr = self.check_input(inp.array, inp.source.modality, inp.name)
        x = self.preprocess(arr)
        probs, samples = self._probabilities(x)
        multilabel = self.task == "multilabel"
        u = float(unc.score(probs[None], self.abstention.method, samples=samples, multilabel=multilabel)[0])
        finding, index, confidence = self._finding(probs)
        abstain, reason = self.abstention.decide(u, confidence)
        heatmap = self._explain(x, index) if explain else None
        pred = Prediction(
            model=self.model_id,
            model_sha256=self.model_sha256,
            task=self.task,
            class_names=list(self.class_names),
            probabilities={c: round(float(p), 6) for c, p in zip(self.class_names, probs)},
            finding=finding,
            confidence=float(confidence),
            uncertainty=u,
            uncertainty_method=self.abstention.method,
            abstain=abstain,
            abstain_reason=reason,
            source=inp.source,
            heatmap=heatmap,
        )
        mid = x[:, x.shape[1] // 2] if x.ndim == 4 else x
        return PredictionResult(pred, sources=list(inp.sources), display_image=display_image(mid), model_input=x)

    def _probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(K,) calibrated probabilities and, for sample-based uncertainty, (S, 1, K) draws."""
        if self.kind == "classical":
            return self._classical_probs(x[None])[0], None
        import torch

        xt = torch.from_numpy(np.ascontiguousarray(x[None]))
        with torch.no_grad():
            probs = self._to_probs(self.net(xt))[0]
        samples = None
        if unc.needs_samples(self.abstention.method):
            if self._mc is not None:
                logits = self._mc.logits(xt, seed=self.seed)
            else:
                logits = unc.tta_logits(self.net, xt)
            samples = np.stack([self._to_probs(z) for z in logits])
        return probs, samples

    def _to_probs(self, logits) -> np.ndarray:
        from medlens.evaluation.calibration import apply_temperature

        return apply_temperature(logits.detach().cpu().numpy(), self.temperature, self.task)

    def _classical_probs(self, x: np.ndarray) -> np.ndarray:
        from medlens.evaluation.calibration import apply_temperature
        from medlens.training.classical import predict_proba_classical

        n_classes = None if self.task == "multilabel" else len(self.class_names)
        p = predict_proba_classical(self.estimator, x, self.task, n_classes=n_classes)
        if self.temperature == 1.0:
            return np.asarray(p, dtype=np.float64)
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
        if self.task == "multilabel":  # temperature on the per-label logit
            return apply_temperature(np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-12)), self.temperature, self.task)
        return apply_temperature(np.log(p), self.temperature, self.task)

    def _finding(self, probs: np.ndarray) -> tuple[str, int, float]:
        """(finding, class index to explain, confidence).

        Binary: the positive class when p >= the validation-chosen threshold (model.json
        thresholds.decision, default 0.5); multi-class / ordinal: argmax; multi-label: labels with
        p >= the threshold joined by "|" ("none" if no label), confidence = the least sure
        label's max(p, 1 - p).
        """
        t = 0.5 if self.decision_threshold is None else float(self.decision_threshold)
        if self.task == "multilabel":
            positive = [i for i, p in enumerate(probs) if p >= t]
            finding = "|".join(self.class_names[i] for i in positive) or "none"
            confidence = float(np.min(np.maximum(probs, 1 - probs)))
            return finding, int(np.argmax(probs)), confidence
        if self.task == "binary" and len(probs) == 2:
            index = 1 if probs[1] >= t else 0
        else:
            index = int(np.argmax(probs))
        return self.class_names[index], index, float(probs[index])

    def _explain(self, x: np.ndarray, index: int) -> np.ndarray:
        """A heatmap in [0, 1] with the model input's spatial shape: Grad-CAM or occlusion."""
        if self.kind == "deep" and self.cam_layer:
            import torch

            from medlens.explain.cam import grad_cam

            net = copy.deepcopy(self.net)  # MONAI leaves its hooks on the module: never on the shared one
            for p in net.parameters():
                p.requires_grad_(True)
            heat = grad_cam(
                net, torch.from_numpy(np.ascontiguousarray(x[None])), target_layer=self.cam_layer, class_index=index
            )[0]
        else:
            from medlens.explain.cam import occlusion_sensitivity

            patch = max(2, min(x.shape[1:]) // OCCLUSION_PATCHES)
            heat = occlusion_sensitivity(self._batch_probs, x[None], class_index=index, patch=patch)[0]
        return _fit_shape(heat, x.shape[1:])

    def _batch_probs(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "classical":
            return self._classical_probs(x)
        import torch

        with torch.no_grad():
            return self._to_probs(self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))))


class _OneImage(Dataset):
    """One in-memory image as a dataset, so that serving runs the training loader unchanged."""

    def __init__(self, image: np.ndarray, dims: int, task: str, n_classes: int, modality: str | None):
        label = tuple([0] * n_classes) if task == "multilabel" else None
        super().__init__(
            "input",
            [Record(id="input", label=label, patient_id="", origin="input")],
            task=Task(task),
            class_names=[str(i) for i in range(n_classes)],
            dims=dims,
            modality=modality,
        )
        self._image = image

    def _load(self, record: Record) -> Sample:
        return Sample(id=record.id, image=self._image, label=record.label, patient_id="", origin=record.origin)


# -- inputs of the command line ----------------------------------------------------------------------
@dataclass
class InputItem:
    """One prediction to make: an image file (``path``) or one DICOM series (``files``).

    ``name`` is unique among the items and names the output files; ``label`` names the input in messages.
    """

    name: str
    label: str
    path: Path | None = None
    files: list[Path] | None = None


def find_inputs(paths: Sequence[str | Path]) -> tuple[list[InputItem], list[str]]:
    """Expand files and folders into predictions to make, and the problems found (one line each).

    A file is one item. A folder gives one item per image file (PNG, JPEG, TIFF, NIfTI) and one
    per DICOM series found in it (a study folder gives one per series); unreadable DICOM files and
    folders without images are reported, never dropped silently.
    """
    from medlens.data.dicom import dicom_files, scan
    from medlens.data.imageio import is_nifti_name, is_raster_name
    from medlens.data.sample import Problem

    items: list[InputItem] = []
    problems: list[str] = []
    used: dict[str, int] = {}

    def unique(stem: str) -> str:
        used[stem] = used.get(stem, 0) + 1
        return stem if used[stem] == 1 else f"{stem}_{used[stem]}"

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(f"{path}: file not found")
            continue
        if path.is_file():
            items.append(InputItem(unique(_stem(path.name)), str(path), path=path))
            continue
        images = sorted(p for p in path.rglob("*") if p.is_file() and (is_raster_name(p.name) or is_nifti_name(p.name)))
        candidates = [p for p in dicom_files(path)[0] if not is_raster_name(p.name)]
        found: list[Problem] = []
        series = scan(candidates, skip_bad=True, problems=found) if candidates else []
        problems.extend(str(p) for p in found)
        for p in images:
            items.append(InputItem(unique(_stem(p.name)), str(p), path=p))
        for i, s in enumerate(series, 1):
            if len(series) == 1:
                stem = path.name
            else:
                stem = f"{path.name}_S{s.series_number}" if s.series_number is not None else f"{path.name}_{i}"
            items.append(InputItem(unique(stem), f"{path} (series {s.key})", files=[Path(f) for f in s.files]))
        if not images and not series and not found:
            problems.append(f"{path}: no images in folder")
    return items, problems


def _stem(name: str) -> str:
    lower = name.lower()
    for ending in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if lower.endswith(ending):
            return name[: -len(ending)] or name
    return name


# -- model choice and verification ----------------------------------------------------------------
def choose_model(run: RunDir, model: str | None) -> str:
    """The model to load: ``model``, the only one, or the best by validation AUC (comparison.json)."""
    names = run.model_names()
    if not names:
        raise MedlensError("no trained model in the run (models/*/model.json)", run.root)
    if model is not None:
        if model not in names:
            raise MedlensError(f"no model '{model}' in the run (models: {', '.join(names)})", run.root)
        return model
    if len(names) == 1:
        return names[0]
    if run.comparison.is_file():
        best = best_by_val_auc(run, names)
        if best is not None:
            return best
    raise MedlensError(
        f"the run holds {len(names)} models ({', '.join(names)}) and no comparison.json ranks them: "
        "choose one with --model",
        run.root,
    )


def best_by_val_auc(run: RunDir, names: list[str]) -> str | None:
    """The model with the highest validation AUC in comparison.json (its ``best`` entry when it names one)."""
    try:
        comparison = read_json(run.comparison)
    except (OSError, ValueError):
        raise MedlensError("comparison.json is not valid JSON", run.comparison) from None
    best = comparison.get("best") if isinstance(comparison, dict) else None
    if isinstance(best, dict):
        best = best.get("model") or best.get("name")
    if isinstance(best, str) and best in names:
        return best
    scores = {n: s for n in names if (s := _val_auc(_comparison_entry(comparison, n))) is not None}
    return max(scores, key=lambda n: (scores[n], n)) if scores else None


def _comparison_entry(comparison: Any, name: str) -> Any:
    models = comparison.get("models") if isinstance(comparison, dict) else comparison
    if isinstance(models, dict):
        return models.get(name)
    if isinstance(models, list):
        for entry in models:
            if isinstance(entry, dict) and name in (entry.get("name"), entry.get("model")):
                return entry
    return None


def _val_auc(entry: Any) -> float | None:
    """Validation AUC of a comparison entry: ``val.auc`` (under ``metrics`` or not), a number or {"value": ...}."""
    if not isinstance(entry, dict):
        return None
    val = (entry.get("metrics") or {}).get("val") if isinstance(entry.get("metrics"), dict) else None
    val = val or entry.get("val")
    if not isinstance(val, dict):
        return None
    auc = val.get("auc")
    if isinstance(auc, dict):
        auc = auc.get("value", auc.get("estimate", auc.get("point")))
    return float(auc) if isinstance(auc, (int, float)) else None


def verify_bundle(run: RunDir, model: str) -> None:
    """Refuse a bundle whose files differ from manifest.json: changed, missing, or unknown files."""
    from medlens.manifest import artifact_files, verify_manifest

    if not run.manifest.is_file():
        raise ChecksumError("no manifest.json: refusing to load a model whose files cannot be verified", run.root)
    try:
        listed = read_json(run.manifest).get("files", {})
    except (OSError, ValueError):
        raise ChecksumError("manifest.json is not valid JSON", run.manifest) from None
    prefix = f"models/{model}/"
    on_disk = {f for f in artifact_files(run.root) if f.startswith(prefix)}
    in_manifest = {f for f in listed if f.startswith(prefix)}
    problems = verify_manifest(run.root, sorted(on_disk | in_manifest))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ChecksumError(f"{problems[0]}{more}; refusing to load the model bundle")


def _rel(run: RunDir, path: Path) -> str:
    return path.relative_to(run.root).as_posix()


def _build_network(info: dict[str, Any], weights: Path):
    from medlens.models.deep.weights import load_weights
    from medlens.models.registry import get_model

    spec = get_model(str(info.get("model") or info["name"]))
    if spec.kind != "deep":
        raise MedlensError(
            f"model.json says deep but '{spec.name}' is a {spec.kind} model", weights.parent / "model.json"
        )
    net = spec.build(
        in_channels=int(info["in_channels"]),
        num_outputs=int(info["num_outputs"]),
        spatial_dims=int(info["dims"]),
        img_size=info["img_size"],
    )
    load_weights(net, weights, strict=True)
    return net.eval()


# -- helpers -----------------------------------------------------------------------------------------
def sniff_suffix(data: bytes) -> str | None:
    """The file ending that matches the content: .dcm, .nii, .nii.gz, .png, .jpg, .tif; None otherwise."""
    head = data[:600]
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    if _is_nifti_header(head):
        return ".nii"
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 600)
        except zlib.error:
            return None
        return ".nii.gz" if _is_nifti_header(inner) else None
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[4:6].isalpha():
        return ".dcm"  # DICOM without the 128-byte preamble: a group 0002/0008 explicit-VR element
    return None


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return int.from_bytes(head[:4], "little") == 348 or int.from_bytes(head[:4], "big") == 348
    if len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
        return int.from_bytes(head[:4], "little") == 540 or int.from_bytes(head[:4], "big") == 540
    return False


def display_image(x: np.ndarray) -> np.ndarray:
    """A (C, H, W) model input as a 2D grey image in [0, 1] (channel mean, 0.5-99.5 percentile range)."""
    grey = np.asarray(x, dtype=np.float32).mean(axis=0)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(grey)
    return np.clip((grey - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _fit_shape(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == tuple(shape):
        return heat
    from scipy.ndimage import zoom

    out = zoom(heat, [s / h for s, h in zip(shape, heat.shape)], order=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _same_modality(given: str | None, trained: str | None) -> bool:
    """Whether an input of modality ``given`` may go to a model trained on ``trained`` (unknown: yes)."""
    g, t = (given or "").upper(), (trained or "").upper()
    if g in UNKNOWN_MODALITIES or t in UNKNOWN_MODALITIES:
        return True
    return g == t or (g in XRAY_FAMILY and t in XRAY_FAMILY)


def _pseudonym(value: str, key: str) -> str:
    from medlens.data.deid import pseudonym

    return pseudonym(value, key)


def _files_sha256(files: Sequence[Path]) -> str:
    """sha256 of one file, or of the sorted per-file hashes of a series."""
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for digest in sorted(sha256_file(f) for f in files):
        h.update(digest.encode())
    return h.hexdigest()


def _read_source(path: Path, *, in_memory: bool) -> pydicom.Dataset:
    """The full dataset of one file for SR evidence and overlays (pixels read lazily unless ``in_memory``)."""
    from medlens.data.dicom import read_file

    ds = read_file(path, full=True, pixels=in_memory)
    return ds


def _write_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Write a received dataset as a DICOM file (adding the file meta a network dataset may lack)."""
    ds = copy.copy(ds)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", pydicom.uid.generate_uid())
        ds.file_meta = meta
    try:
        ds.save_as(path, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as e:
        raise BadInputError(
            f"cannot use the DICOM dataset ({e})".splitlines()[0], str(ds.get("SOPInstanceUID", "dataset"))
        ) from None


def _volume_image(vol):
    """A :class:`~medlens.data.dicom.Volume` as ImageData, as :func:`medlens.data.dicom.read_series_folder` makes it."""
    from medlens.data.dicom import sample_affine
    from medlens.data.imageio import ImageData

    if vol.is_2d:
        array, spacing = vol.array, vol.spacing[1:]
    else:
        array = vol.array if vol.array.ndim == 4 else vol.array[None]
        spacing = vol.spacing
    return ImageData(
        array, spacing=tuple(spacing), affine=sample_affine(vol), modality=vol.modality, meta=dict(vol.meta)
    )
