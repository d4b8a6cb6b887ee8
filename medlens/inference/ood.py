"""The out-of-distribution guard: is an input like the images the model was made for?

Training fits it (:func:`fit_guard`) and stores what a person can read in the card's ``ood``
field and the numbers behind the scores in ``ood.safetensors`` beside the weights:

* **profile** of the training images as stored (before preprocessing): their size range
  (sides sorted, so orientation does not matter) and how many are colour images;
* **intensity profile** of the model inputs: a Mahalanobis distance (Ledoit-Wolf covariance,
  scikit-learn) of a few histogram statistics of the preprocessed image;
* **feature distance**: the class-conditional Mahalanobis distance (Lee et al., NeurIPS 2018)
  of the network's penultimate-layer features (the input of its last linear layer), or for a
  classical model of the features its pipeline computes before the classifier.

Both distances are fitted on the training split; each threshold is the validation quantile that
accepts ``1 - (1 - accept) / 2`` of the validation images, so the two together accept about
``accept`` (default 99%) of in-distribution images. The size and colour rules are hard: an image
more than ``size_factor`` times smaller or larger than any training image, or a colour photograph
given to a model trained only on grayscale images (and the reverse), is outside.

At prediction time :meth:`Guard.check` returns a :class:`Scope`; an input outside it is referred
with every reason spelled out ("colour image; model trained on grayscale DX (X-ray) images").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medlens.data.quantiles import percentiles, sorted_percentiles
from medlens.errors import MedlensError
from medlens.runs import OOD_GUARD_FILE as OOD_FILE

DEFAULT_ACCEPT = 0.99
DEFAULT_SIZE_FACTOR = 2.0
COLOUR_LEVEL = 0.05
"""Mean channel spread / grey range above which an image counts as colour (measured: grayscale
JPEGs stored as RGB <= 0.011, fundus photographs >= 0.10)."""
ALL_OR_NONE = 0.01
"""A training set with fewer than 1% colour images counts as grayscale, more than 99% as colour."""

MODALITY_WORDS = {
    "DX": "X-ray",
    "CR": "X-ray",
    "DR": "X-ray",
    "RG": "X-ray",
    "MG": "mammography",
    "CT": "CT",
    "MR": "MRI",
    "US": "ultrasound",
    "OP": "fundus photograph",
    "XC": "photograph",
    "SM": "slide microscopy",
    "PT": "PET",
    "NM": "nuclear medicine",
}


CHECKS = {
    "size": "Image size outside the training range",
    "colour": "Colour or grayscale unlike the training images",
    "intensity": "Intensity profile unlike the training images",
    "features": "Image content unlike the training images",
}
"""The guard's checks, each with a short meaning (<= 64 characters: a DICOM code meaning)."""


@dataclass(frozen=True)
class Scope:
    """Whether one input is inside what the model was made for, and why not: ``reasons`` are
    ``{"check": one of CHECKS, "reason": a sentence}``."""

    checked: bool
    reasons: tuple[dict[str, str], ...] = ()
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def inside(self) -> bool:
        return not self.reasons

    def describe(self) -> str | None:
        """One line for a person ("outside what the model was made for: ..."), None when inside."""
        return describe(self.reasons)


def describe(reasons: Iterable[dict[str, str]]) -> str | None:
    """ "outside what the model was made for: REASON; REASON", None without reasons."""
    texts = [r["reason"] for r in reasons]
    return "outside what the model was made for: " + "; ".join(texts) if texts else None


UNCHECKED = Scope(checked=False)


# -- what is measured on one image ---------------------------------------------------------------
def colourfulness(image: np.ndarray) -> float:
    """Mean spread between the first three channels relative to the grey range (0 for grayscale)."""
    a = np.asarray(image, dtype=np.float32)
    if a.shape[0] < 3:
        return 0.0
    rgb = a[:3]
    lo, hi = percentiles(rgb.mean(axis=0), [1, 99])
    return float((rgb.max(axis=0) - rgb.min(axis=0)).mean() / max(float(hi - lo), 1e-6))


def extent(image: np.ndarray) -> list[int]:
    """Spatial sides of a channels-first image, sorted (orientation does not matter)."""
    return sorted(int(s) for s in np.shape(image)[1:])


def intensity_statistics(x: np.ndarray) -> np.ndarray:
    """Histogram statistics (N, S) of model inputs (N, C, ...): channel-mean image quantiles,
    mean, spread, share at its minimum and maximum, and each channel's mean. One sort per image
    gives the quantiles, the extremes and the shares near them."""
    x = np.asarray(x, dtype=np.float32)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    grey = flat[:, 0] if c == 1 else flat.mean(axis=1)
    ordered = np.sort(grey, axis=1)
    q = sorted_percentiles(ordered, [1, 5, 25, 50, 75, 95, 99]).T
    lo, hi = ordered[:, :1], ordered[:, -1:]
    tol = 0.01 * np.maximum(hi - lo, 1e-6)
    size = ordered.shape[1]
    at_min = [np.searchsorted(row, bound, side="right") for row, bound in zip(ordered, (lo + tol)[:, 0])]
    at_max = [size - np.searchsorted(row, bound, side="left") for row, bound in zip(ordered, (hi - tol)[:, 0])]
    parts = [
        q,
        grey.mean(axis=1, keepdims=True),
        grey.std(axis=1, keepdims=True),
        np.divide(at_min, size)[:, None],
        np.divide(at_max, size)[:, None],
    ]
    if c > 1:
        parts.append(flat.mean(axis=2))
    return np.concatenate(parts, axis=1).astype(np.float64)


# -- Mahalanobis scores ----------------------------------------------------------------------------
def _fit_gaussian(features: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and the shared precision matrix (D, D) of ``features`` (Ledoit-Wolf)."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    if labels is None or len(np.unique(labels)) < 2:
        means = f.mean(axis=0, keepdims=True)
        centred = f - means
    else:
        classes = np.unique(labels)
        means = np.stack([f[labels == k].mean(axis=0) for k in classes])
        centred = f - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return means, precision


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distance (N,) of each row of ``features`` to its nearest class mean."""
    f = np.asarray(features, dtype=np.float64)
    best = np.full(len(f), np.inf)
    for mu in np.asarray(means, dtype=np.float64):
        d = f - mu
        best = np.minimum(best, ((d @ precision) * d).sum(axis=1))
    return np.sqrt(np.maximum(best, 0.0))


# -- the guard ---------------------------------------------------------------------------------------
class Guard:
    """The fitted guard of one model: ``spec`` is the card's ``ood`` field, ``arrays`` ood.safetensors."""

    def __init__(self, spec: dict[str, Any], arrays: dict[str, np.ndarray], *, modality: str | None = None):
        self.spec = spec
        self.arrays = arrays
        self.modality = modality

    @classmethod
    def load(cls, model_dir: Path, spec: dict[str, Any], *, modality: str | None = None) -> "Guard":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(model_dir) / spec.get("file", OOD_FILE)
        try:
            arrays = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise MedlensError(f"the out-of-distribution guard cannot be read ({e})".splitlines()[0], path) from None
        missing = {"feature_means", "feature_precision", "intensity_means", "intensity_precision"} - set(arrays)
        if missing:
            raise MedlensError(f"the out-of-distribution guard lacks {', '.join(sorted(missing))}", path)
        return cls(spec, arrays, modality=modality)

    def save(self, model_dir: Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(model_dir) / self.spec.get("file", OOD_FILE)
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.arrays.items()}, str(path))
        return path

    def scores(self, x: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """Intensity and feature distances (N,) of model inputs ``x`` with their ``features``."""
        a = self.arrays
        return {
            "intensity": mahalanobis(intensity_statistics(x), a["intensity_means"], a["intensity_precision"]),
            "features": mahalanobis(features, a["feature_means"], a["feature_precision"]),
        }

    def check(self, image: np.ndarray, x: np.ndarray, features: np.ndarray) -> Scope:
        """The scope of one input: ``image`` as read (C, ...), ``x`` its model input, ``features`` (D,)."""
        return self.check_batch([image], np.asarray(x)[None], np.asarray(features)[None])[0]

    def check_batch(self, images: Sequence[np.ndarray], x: np.ndarray, features: np.ndarray) -> list[Scope]:
        """:meth:`check` for a batch: ``images`` as read, ``x`` (N, C, ...) their model inputs and
        ``features`` (N, D); the distances are computed for all at once."""
        scores = self.scores(x, features)
        return [self._scope(image, {k: float(v[i]) for k, v in scores.items()}) for i, image in enumerate(images)]

    def _scope(self, image: np.ndarray, scored: dict[str, float]) -> Scope:
        profile = self.spec["profile"]
        reasons: list[dict[str, str]] = []
        sides = extent(image)
        lo = [s / profile["size_factor"] for s in profile["size_min"]]
        hi = [s * profile["size_factor"] for s in profile["size_max"]]
        if len(sides) == len(lo) and any(s < a or s > b for s, a, b in zip(sides, lo, hi)):
            sides_text = _sides(np.shape(image)[1:])
            trained = _images(_range(profile) + " px", self.modality)
            reasons.append({"check": "size", "reason": f"image {sides_text} px; model trained on {trained}"})
        colour = colourfulness(image) > COLOUR_LEVEL
        share = profile["colour_share"]
        if colour and share < ALL_OR_NONE:
            reasons.append(
                {"check": "colour", "reason": f"colour image; model trained on {_images('grayscale', self.modality)}"}
            )
        elif not colour and share > 1 - ALL_OR_NONE:
            reasons.append(
                {"check": "colour", "reason": f"grayscale image; model trained on {_images('colour', self.modality)}"}
            )
        limits = self.spec["thresholds"]
        if scored["intensity"] > limits["intensity"]:
            reasons.append(
                {
                    "check": "intensity",
                    "reason": f"intensities unlike the training images (distance {scored['intensity']:.3g}, "
                    f"accepted up to {limits['intensity']:.3g})",
                }
            )
        if scored["features"] > limits["features"]:
            reasons.append(
                {
                    "check": "features",
                    "reason": f"content unlike the training images (feature distance {scored['features']:.3g}, "
                    f"accepted up to {limits['features']:.3g})",
                }
            )
        return Scope(checked=True, reasons=tuple(reasons), scores=scored)


def fit_guard(
    *,
    images: Iterable[np.ndarray],
    x_train: np.ndarray,
    y_train: np.ndarray,
    f_train: np.ndarray,
    x_val: np.ndarray,
    f_val: np.ndarray,
    feature_source: str,
    accept: float = DEFAULT_ACCEPT,
    size_factor: float = DEFAULT_SIZE_FACTOR,
    modality: str | None = None,
) -> Guard:
    """Fit the guard: profile of the stored training ``images``, distances on the training split
    (inputs ``x_train``, labels ``y_train``, features ``f_train``), thresholds on validation."""
    if not 0.5 <= accept < 1.0:
        raise MedlensError(f"the share of in-distribution images to accept must be in [0.5, 1), got {accept}")
    if size_factor < 1.0:
        raise MedlensError(f"the size factor must be at least 1, got {size_factor}")
    sides, colour = [], []
    for image in images:
        sides.append(extent(image))
        colour.append(colourfulness(image) > COLOUR_LEVEL)
    if not sides or len({len(s) for s in sides}) != 1:
        raise MedlensError("the out-of-distribution guard needs training images of one dimensionality")
    y = np.asarray(y_train)
    f_means, f_precision = _fit_gaussian(f_train, y if y.ndim == 1 else None)  # multi-label: one Gaussian
    i_means, i_precision = _fit_gaussian(intensity_statistics(x_train), None)
    guard = Guard(
        {},
        {
            "feature_means": f_means,
            "feature_precision": f_precision,
            "intensity_means": i_means,
            "intensity_precision": i_precision,
        },
        modality=modality,
    )
    per_score = 1.0 - (1.0 - accept) / 2.0
    val = guard.scores(x_val, f_val)
    train = guard.scores(x_train, f_train)
    thresholds = {k: float(np.quantile(v, per_score, method="higher")) for k, v in val.items()}
    guard.spec = {
        "file": OOD_FILE,
        "accept": accept,
        "thresholds_chosen_on": f"val ({len(x_val)} images, each distance accepts {per_score:.1%})",
        "feature_source": feature_source,
        "feature_dim": int(f_means.shape[1]),
        "thresholds": thresholds,
        "accepted": {
            "train": float(np.mean(np.all([train[k] <= thresholds[k] for k in train], axis=0))),
            "val": float(np.mean(np.all([val[k] <= thresholds[k] for k in val], axis=0))),
        },
        "profile": {
            "n_images": len(sides),
            "size_min": [int(v) for v in np.min(sides, axis=0)],
            "size_max": [int(v) for v in np.max(sides, axis=0)],
            "size_factor": size_factor,
            "colour_share": float(np.mean(colour)),
        },
    }
    return guard


def _images(adjective: str, modality: str | None) -> str:
    """ "grayscale DX (X-ray) images" """
    words = MODALITY_WORDS.get((modality or "").upper())
    kind = f"{modality} ({words})" if words else modality
    return " ".join(w for w in (adjective, kind, "images") if w)


def _sides(shape: Iterable[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _range(profile: dict[str, Any]) -> str:
    lo, hi = profile["size_min"], profile["size_max"]
    return _sides(lo) if lo == hi else f"{_sides(lo)} to {_sides(hi)}"
