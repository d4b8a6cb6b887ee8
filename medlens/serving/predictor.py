"""The predictor: reads an input and answers with a :class:`~medlens.inference.prediction.Prediction`.

Everything about the model is the bundle's (:class:`medlens.inference.bundle.Bundle`: verified
loading, preprocessing, calibrated probabilities, the decision rule, uncertainty and abstention,
explanations). This module only reads inputs (:meth:`~Predictor.predict_path`,
:meth:`~Predictor.predict_bytes`, :meth:`~Predictor.predict_dicom`,
:meth:`~Predictor.predict_files`, :meth:`~Predictor.predict_array`) with
:mod:`medlens.data.imageio` and :mod:`medlens.data.dicom`, checks that they fit the model
(spatial dimensions, channels, modality), pseudonymizes patient identifiers, and assembles the
answer. It is also the Python API (see README): the service, ``medlens predict`` and a notebook
get the same :class:`PredictionResult` for the same input.

A segmentation bundle (card task "segmentation") answers through the same readers with a label map
(:attr:`PredictionResult.mask`, in the source's geometry) and its measurements
(:func:`medlens.inference.measurements.measure_segments`); :meth:`PredictionResult.dicom_results`
gives its DICOM SEG and the SR referencing it, :meth:`PredictionResult.mask_nifti` its NIfTI mask.
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
from typing import Iterator, Sequence

import numpy as np
import pydicom

from medlens.data.sample import ImageData
from medlens.errors import BadInputError, MedlensError
from medlens.inference.bundle import Bundle
from medlens.inference.card import ModelCard
from medlens.inference.geometry import DeferredView, SourceView, answer_view, source_view
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.runs import sha256_file

PSEUDONYM_KEY_ENV = "MEDLENS_PSEUDONYM_KEY"
XRAY_FAMILY = {"DX", "CR", "RG", "DR", "XR", "PX"}  # projection radiographs: one family for the modality check
UNKNOWN_MODALITIES = {"", "OT"}
RASTER_UPLOADS = (".png", ".jpg", ".tif")  # what sniff_suffix names an upload that Pillow decodes from memory


class UnsupportedMediaError(MedlensError):
    """Uploaded content that is no image medlens reads (not DICOM, NIfTI, PNG or JPEG); REST answers 415."""


@dataclass
class PredictionResult:
    """A prediction with what it was computed from.

    ``sources``: the DICOM datasets of the input (empty for other formats); ``view``: the picture
    of the prediction in the source's geometry (:func:`medlens.inference.geometry.answer_view`:
    the source image windowed for display with the heatmap on its pixels; for 3D the source slice
    where the heatmap peaks); ``slice_uids``: the SOP Instance UID of each source slice, in the
    source's slice order (DICOM input); ``model_input``: the preprocessed array (C, H, W) or
    (C, D, H, W) the model saw. ``prediction.heatmap`` stays in the model input's geometry.

    Segmentation: ``mask`` is the uint8 label map (0 background, 1..K the card's classes after
    background) with the source's spatial shape ((D, H, W) in the DICOM reader's slice order, or
    (H, W)); ``spacing`` (mm per spatial axis) and ``affine`` (voxel index -> RAS mm) are the
    source's as read (None when the format has none). None for a classification.
    """

    prediction: Prediction
    sources: list[pydicom.Dataset] = field(default_factory=list)
    view: SourceView | DeferredView | None = None
    slice_uids: list[str] = field(default_factory=list)
    model_input: np.ndarray | None = None
    mask: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None

    @property
    def display_image(self) -> np.ndarray | None:
        """The source image (2D, [0, 1], the source's rows x columns) the overlays are drawn on."""
        return None if self.view is None else self.view.image

    def heatmap_slice(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(display image, heatmap) as matching 2D arrays in the source's geometry."""
        return (None, None) if self.view is None else (self.view.image, self.view.heatmap)

    def shown_source(self) -> pydicom.Dataset | None:
        """The DICOM instance the display image shows (None for other formats)."""
        index = None if self.view is None else self.view.slice_index
        if index is not None and index < len(self.slice_uids):
            uid = self.slice_uids[index]
            for ds in self.sources:
                if str(ds.get("SOPInstanceUID", "")) == uid:
                    return ds
        if len(self.sources) > 1:
            raise MedlensError("cannot tell which source instance the shown slice is")
        return self.sources[0] if self.sources else None

    def overlay_png(self) -> bytes:
        """The heatmap over the display image as PNG bytes (the grey image alone without a heatmap)."""
        from medlens.serving.overlay import overlay_png

        image, heat = self.heatmap_slice()
        if image is None:
            raise MedlensError("the prediction has no display image")
        return overlay_png(image, heat)

    def dicom_seg(self) -> pydicom.Dataset:
        """The DICOM SEG of the mask over the source instances, each segment coded with the card's
        code of its class (as the SR and FHIR code it)."""
        from highdicom.sr import CodedConcept

        from medlens.serving.seg import Segment, segmentation

        pred = self.prediction
        if self.mask is None:
            raise MedlensError(f"model '{pred.model}' is not a segmentation model: it has no mask for a DICOM SEG")
        if not self.sources:
            raise MedlensError("a DICOM SEG needs DICOM input (it references the source images)")
        segments = []
        for name in pred.class_names[1:]:
            concept = pred.concept(name)
            segments.append(Segment(name, property_type=CodedConcept(concept.code, concept.scheme, concept.meaning)))
        return segmentation(self.mask, self.sources, segments, model=pred.model)

    def dicom_results(self, *, previous_versions: Sequence[pydicom.Dataset] | None = None) -> list[pydicom.Dataset]:
        """The DICOM objects of the prediction (DICOM input only): its SR; for a segmentation the
        SEG and the TID 1500 SR that references it. The CLI, --send-back and the DICOM node send these;
        ``previous_versions``: earlier SRs the new one supersedes."""
        from medlens.serving.sr import segmentation_report, structured_report

        if self.mask is None:
            return [structured_report(self.prediction, self.sources, previous_versions=previous_versions)]
        seg = self.dicom_seg()
        return [seg, segmentation_report(self.prediction, seg, self.sources, previous_versions=previous_versions)]

    def mask_nifti(self):
        """The mask as a nibabel image with the source's affine: a NIfTI input's own, a DICOM
        series' as ``medlens convert --to nifti`` writes it (what :func:`medlens.data.masks.mask_nifti`
        gives for the series' volume), so that image and mask overlay voxel for voxel."""
        from medlens.data.synth_writer import nifti_image

        if self.mask is None:
            raise MedlensError(f"model '{self.prediction.model}' is not a segmentation model: it has no mask")
        return nifti_image(self.mask, self.affine if self.mask.ndim == 3 else None, self.spacing)


@dataclass
class _Input:
    """An image read from somewhere, before the model's checks and preprocessing."""

    array: np.ndarray
    source: SourceInfo
    name: str  # names the input in error messages
    sources: list[pydicom.Dataset] = field(default_factory=list)
    window: tuple[float, float] | None = None  # DICOM window (centre, width) for display
    slice_uids: list[str] = field(default_factory=list)  # SOP Instance UID per slice, in slice order
    spacing: tuple[float, ...] | None = None  # mm per spatial axis, as read
    affine: np.ndarray | None = None  # voxel index (slice, row, column) -> RAS mm, as read


@dataclass
class _Prepared:
    """An input after the model's checks (``arr``) and preprocessing (``x``, the model input)."""

    inp: _Input
    arr: np.ndarray
    x: np.ndarray


class Predictor:
    """A verified model bundle that reads inputs and answers. Build it with :meth:`from_run`."""

    def __init__(self, bundle: Bundle, *, pseudonym_key: str | None = None):
        self.bundle = bundle
        self._pseudonym_key = pseudonym_key or os.environ.get(PSEUDONYM_KEY_ENV) or secrets.token_hex(16)

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
        it must agree with the card's validated abstention rule when there is one.
        ``pseudonym_key`` keys patient pseudonyms (default: $MEDLENS_PSEUDONYM_KEY, else random).
        """
        return cls(Bundle.load(run_dir, model, uncertainty=uncertainty), pseudonym_key=pseudonym_key)

    # what the service shows about the model
    @property
    def card(self) -> ModelCard:
        return self.bundle.card

    @property
    def model_id(self) -> str:
        """The model's name in its run (the bundle folder name)."""
        return self.bundle.name

    @property
    def pseudonym_key(self) -> str:
        """The key of this predictor's patient pseudonyms (processes that must agree share it)."""
        return self._pseudonym_key

    @property
    def model_sha256(self) -> str:
        """sha256 of the weights file (model.safetensors or model.joblib), as in the manifest."""
        return self.bundle.weights_sha256

    # -- public entry points ---------------------------------------------------------------
    def predict(self, item: str | Path | np.ndarray, *, explain: bool = False) -> PredictionResult:
        """Predict for a file or DICOM series folder (a path), or a channels-first array in native units."""
        if isinstance(item, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(item).tobytes()).hexdigest()
            return self.predict_array(item, explain=explain, source=SourceInfo(kind="array", input_sha256=digest))
        return self.predict_path(item, explain=explain)

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
        return self._predict(self.read_bytes(data, filename), explain=explain)

    def read_bytes(self, data: bytes, filename: str) -> _Input:
        """Uploaded bytes read (no torch; :meth:`prepare` is the next step); see :meth:`predict_bytes`.

        Rasters (PNG, JPEG, TIFF) are decoded from memory; DICOM and NIfTI go through a temporary file."""
        suffix = sniff_suffix(data)
        if suffix is None:
            raise UnsupportedMediaError("not a supported image (expected DICOM, NIfTI, PNG or JPEG content)", filename)
        if suffix in RASTER_UPLOADS:
            from medlens.data.imageio import read_raster_bytes

            image = read_raster_bytes(data, filename)
            digest = hashlib.sha256(data).hexdigest()
            return self._image_input(image, digest, filename, fallback_format=suffix.lstrip("."))
        with tempfile.TemporaryDirectory(prefix="medlens-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                if suffix == ".dcm":
                    return self._read_dicom_files([path], name=filename, in_memory=True)
                return self._read_path(path, name=filename)
            except MedlensError as e:
                if e.path is None or not e.path.startswith(tmp):
                    raise
                raise type(e)(e.problem, filename) from None  # name the upload, not the temporary file

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
        if (
            str(data.meta.get("format") or "").lower() == "dicom"
        ):  # a DICOM file without the marker, found by imageio's fallback
            return self._read_dicom_files([path], name=name)
        fallback = "nifti" if is_nifti_name(lower) else path.suffix.lstrip(".")
        return self._image_input(data, sha256_file(path), name or str(path), fallback_format=fallback)

    @staticmethod
    def _image_input(data: ImageData, digest: str, name: str, *, fallback_format: str) -> _Input:
        """A non-DICOM image as an input (its format from the reader, else ``fallback_format``)."""
        fmt = str(data.meta.get("format") or fallback_format).lower()
        source = SourceInfo(kind=fmt, input_sha256=digest, modality=data.modality)
        return _Input(data.array, source, name=name, spacing=data.spacing, affine=data.affine)

    def _read_dicom_files(
        self, files: list[Path], *, name: str | None = None, source: Path | None = None, in_memory: bool = False
    ) -> _Input:
        """One series: the pixel volume via medlens.data.dicom, the headers as SR/overlay sources."""
        from medlens.data.dicom import read_dicom, read_series

        vol = read_dicom(files[0]) if len(files) == 1 and source is None else read_series(files, source=source)
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
        depth = vol.array.shape[-3]  # slices (1 for a 2D image); 4D arrays are time-major
        return _Input(
            data.array,
            info,
            name=name or str(source or files[0]),
            sources=datasets,
            window=None if vol.meta.get("monochrome1_inverted") else vol.window,  # the file's is for uninverted values
            slice_uids=list(vol.sop_instance_uids[:depth]),
            spacing=data.spacing,
            affine=data.affine,
        )

    # -- checks ---------------------------------------------------------------------------------
    def accepts_modality(self, modality: str | None) -> bool:
        """Whether images of this DICOM modality may go to the model (as :meth:`check_input` decides)."""
        return _same_modality(modality, self.card.modality)

    def check_input(self, image: np.ndarray, modality: str | None, name: str | None = None) -> np.ndarray:
        """The image fitted to the model's spatial dimensions, or a one-line error why it cannot go in.

        A one-slice volume counts as a 2D image; channels must be the model's or convertible by
        :func:`medlens.data.arrays.convert_channels` (gray <-> RGB, done in preprocessing).
        """
        card = self.card
        arr = np.asarray(image, dtype=np.float32)
        dims = arr.ndim - 1
        if dims == 3 and card.dims == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
            dims = 2
        if dims != card.dims:
            what = f"a {dims}D {'volume' if dims == 3 else 'image'} {tuple(arr.shape[1:])}"
            raise MedlensError(f"{what} cannot go to model '{self.model_id}', which takes {card.dims}D images", name)
        if not _same_modality(modality, card.modality):
            raise MedlensError(
                f"the input is {modality} but model '{self.model_id}' was trained on {card.modality} images", name
            )
        c = arr.shape[0]
        if c != card.in_channels and not (c == 1 or (card.in_channels == 1 and c in (3, 4))):
            raise MedlensError(f"the input has {c} channels but model '{self.model_id}' takes {card.in_channels}", name)
        if not np.all(np.isfinite(arr)):
            raise BadInputError("the image holds NaN or infinite values", name)
        return arr

    # -- the answer -------------------------------------------------------------------------------
    def _predict(self, inp: _Input, *, explain: bool) -> PredictionResult:
        return self.answer([self.prepare(inp)], explain=explain)[0]

    def prepare(self, inp: _Input) -> _Prepared:
        """Checks and preprocessing of one input; raises a one-line error naming it."""
        arr = self.check_input(inp.array, inp.source.modality, inp.name)
        return _Prepared(inp, arr, self.bundle.preprocess(arr, name=inp.name))

    def answer(self, batch: Sequence[_Prepared], *, explain: bool = False) -> list[PredictionResult]:
        """The answers for prepared inputs: one batched pass of the network (probabilities,
        features for the guard, uncertainty draws) for a classification; each input's sliding
        window for a segmentation. An input's answer does not depend on the batch it is in."""
        if self.card.task == "segmentation":
            return [self._segment(p.inp, p.arr, p.x) for p in batch]
        if not batch:
            return []
        bundle = self.bundle
        x = np.stack([p.x for p in batch])
        raw, features, samples = bundle.probe(x, features=bundle.guard is not None)
        probs = bundle.calibrate(raw)
        findings = [bundle.finding(row) for row in probs]
        doubts = bundle.uncertainty(x, probs, np.array([f[2] for f in findings]), samples=samples)
        heatmaps = bundle.explain(x, np.array([f[1] for f in findings])) if explain else [None] * len(batch)
        scopes = bundle.scopes([p.arr for p in batch], x, features)
        results = []
        for i, p in enumerate(batch):
            scope = scopes[i]
            (finding, _, confidence), doubt = findings[i], doubts[i]
            refer = [r for r in (scope.describe(), doubt.reason if doubt.abstain else None) if r]
            pred = Prediction(
                model=self.model_id,
                model_sha256=self.model_sha256,
                task=self.card.task,
                class_names=bundle.class_names,
                probabilities={c: round(float(v), 6) for c, v in zip(bundle.class_names, probs[i])},
                raw_probabilities={c: round(float(v), 6) for c, v in zip(bundle.class_names, raw[i])},
                codes={c: concept.model_dump() for c, concept in self.card.codes.items()},
                finding=finding,
                confidence=float(confidence),
                uncertainty=doubt.uncertainty,
                uncertainty_method=doubt.method,
                abstain=bool(refer),
                abstain_reason="; ".join(refer) or None,
                out_of_scope=[dict(r) for r in scope.reasons],
                scope_checked=scope.checked,
                source=p.inp.source,
                heatmap=heatmaps[i],
            )
            view = answer_view(p.arr, heatmaps[i], window=p.inp.window, preprocessing=self.card.preprocessing)
            results.append(
                PredictionResult(pred, list(p.inp.sources), view, slice_uids=p.inp.slice_uids, model_input=p.x)
            )
        return results

    def predict_items(
        self, items: Sequence[InputItem], *, batch_size: int = 64, explain: bool = False
    ) -> Iterator[tuple[InputItem, PredictionResult | Exception]]:
        """Each item of :func:`find_inputs` with its answer, or the exception that stopped it
        (an input that cannot be read or does not fit the model fails alone); inputs go through
        the network ``batch_size`` at a time, in order."""
        for start in range(0, len(items), max(1, int(batch_size))):
            chunk = items[start : start + max(1, int(batch_size))]
            ready: list[tuple[InputItem, _Prepared]] = []
            for item in chunk:
                try:
                    ready.append((item, self.prepare(self.read_item(item))))
                except Exception as e:  # noqa: BLE001 - one input's failure is its own answer
                    yield item, e
            yield from self.answer_prepared(ready, explain=explain)

    def answer_prepared(
        self, ready: Sequence[tuple[InputItem, _Prepared]], *, explain: bool = False
    ) -> Iterator[tuple[InputItem, PredictionResult | Exception]]:
        """Answers for inputs already read and prepared (by :meth:`prepare_item`, e.g. in a data
        loader's worker); when the batch fails as a whole, each input is answered alone so that
        only the one at fault fails."""
        try:
            answers: list[PredictionResult | Exception] = list(self.answer([p for _, p in ready], explain=explain))
        except Exception:  # noqa: BLE001 - find the input at fault
            answers = []
            for _, p in ready:
                try:
                    answers.append(self.answer([p], explain=explain)[0])
                except Exception as e:  # noqa: BLE001 - one input's failure is its own answer
                    answers.append(e)
        yield from zip([item for item, _ in ready], answers)

    def read_item(self, item: InputItem) -> _Input:
        """The input of one item of :func:`find_inputs` (an image file or one DICOM series)."""
        if item.files:
            return self._read_dicom_files(list(item.files))
        assert item.path is not None
        return self._read_path(item.path)

    def prepare_item(self, item: InputItem) -> _Prepared:
        """One item read, checked and preprocessed (what :meth:`answer_prepared` takes)."""
        return self.prepare(self.read_item(item))

    def _segment(self, inp: _Input, arr: np.ndarray, x: np.ndarray) -> PredictionResult:
        """A segmentation's answer: class probabilities (mapped onto the source's grid, linearly,
        when the model input's differs), their argmax as the label map, and its measurements.

        ``finding``: the classes with at least one voxel, joined by "|" ("none" if none);
        ``confidence``: the mean probability of the assigned class over the segmented voxels (over
        all voxels when nothing is segmented). No voxel-wise uncertainty or out-of-distribution
        guard exists for segmentation models (their card says ``ood: null``): ``uncertainty_method``
        "none", ``scope_checked`` false. No heatmap either (``explain`` has no effect: the mask is the answer).
        """
        from medlens.inference.geometry import to_source_geometry
        from medlens.inference.measurements import is_vessel, measure_segments

        names = self.bundle.class_names
        probs = self.bundle.segment(x)
        spatial = arr.shape[1:]
        if probs.shape[1:] != spatial:
            probs = np.stack([to_source_geometry(p, spatial) for p in probs])
        labels = probs.argmax(axis=0).astype(np.uint8)
        assigned = np.take_along_axis(probs, labels[None].astype(np.intp), axis=0)[0]
        found = labels > 0
        confidence = float(assigned[found].mean() if found.any() else assigned.mean())
        present = np.bincount(labels.ravel(), minlength=len(names))
        spacing = _spatial_spacing(inp.spacing, labels.ndim)
        fov = None
        if labels.ndim == 2 and any(is_vessel(n) for n in names[1:]):
            from medlens.data.sources.maskfolder import derive_fov  # as the vessel sets derive it

            fov = derive_fov(arr)
        pred = Prediction(
            model=self.model_id,
            model_sha256=self.model_sha256,
            task=self.card.task,
            class_names=names,
            probabilities={},
            codes={c: concept.model_dump() for c, concept in self.card.codes.items()},
            finding="|".join(n for n, count in zip(names[1:], present[1:]) if count) or "none",
            confidence=round(confidence, 6),
            uncertainty=0.0,
            uncertainty_method="none",
            abstain=False,
            abstain_reason=None,
            scope_checked=False,
            source=inp.source,
            measurements=[dict(m) for m in measure_segments(labels, names, spacing, fov)],
        )
        view = source_view(arr, None, window=inp.window, preprocessing=self.card.preprocessing)
        return PredictionResult(
            pred,
            list(inp.sources),
            view,
            slice_uids=inp.slice_uids,
            model_input=x,
            mask=labels.reshape(inp.array.shape[1:]),  # a one-slice volume given to a 2D model keeps its slice axis
            spacing=inp.spacing,
            affine=inp.affine,
        )


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
    folders without images are reported, never dropped silently. A ``.csv`` file with a ``path``
    column lists files and folders (e.g. DICOM studies), relative to the CSV's folder.
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

    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed, problem = _listed_paths(path)
            expanded.extend(listed)
            problems.extend([problem] if problem else [])
        else:
            expanded.append(path)
    for path in expanded:
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


LIST_SUFFIXES = (".csv",)


def _listed_paths(path: Path) -> tuple[list[Path], str | None]:
    """The paths a list file names (see :func:`find_inputs`), and a problem with the list itself."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return [], f"{path}: cannot read the list ({type(e).__name__})"
    reader = csv.DictReader(text.splitlines())
    if "path" not in (reader.fieldnames or []):
        return [], f"{path}: a list of inputs needs a 'path' column (found: {', '.join(reader.fieldnames or [])})"
    entries = [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
    if not entries:
        return [], f"{path}: the list names no inputs"
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)], None


def _stem(name: str) -> str:
    lower = name.lower()
    for ending in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if lower.endswith(ending):
            return name[: -len(ending)] or name
    return name


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


def _same_modality(given: str | None, trained: str | None) -> bool:
    """Whether an input of modality ``given`` may go to a model trained on ``trained`` (unknown: yes)."""
    g, t = (given or "").upper(), (trained or "").upper()
    if g in UNKNOWN_MODALITIES or t in UNKNOWN_MODALITIES:
        return True
    return g == t or (g in XRAY_FAMILY and t in XRAY_FAMILY)


def _spatial_spacing(spacing: Sequence[float] | None, dims: int) -> tuple[float, ...] | None:
    """The spacing of the last ``dims`` spatial axes (a one-slice volume given to a 2D model: rows, columns)."""
    if spacing is None or len(spacing) < dims:
        return None
    return tuple(float(s) for s in spacing[len(spacing) - dims :])


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
