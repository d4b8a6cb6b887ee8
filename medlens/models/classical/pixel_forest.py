"""A random forest that labels every pixel (voxel) from its filter bank: the classical segmenter.

:class:`PixelForest` is the segmentation baseline of the ML-vs-DL comparison: scikit-learn's
``RandomForestClassifier`` on the per-pixel features of
:mod:`medlens.models.classical.pixel_features`. This module only samples training pixels and tiles
prediction.

Training samples at most ``max_samples_per_image`` pixels per image, split evenly over the classes
present in that image (inside its field of view when one is given), so thin structures such as
vessels are not swamped by background. Each sampled pixel is weighted by how many pixels of its
class it stands for in its image, so the forest's probabilities keep the true class frequencies
(argmax is then the usual accuracy-optimal label) while every class is seen often enough to learn.

Prediction computes one image's features at a time and passes them to the forest in chunks of
``chunk_pixels`` pixels, so memory is one image's feature stack plus one chunk. The fitted object is
a plain picklable estimator (save it with :func:`~medlens.models.classical.persistence.save_estimator`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.utils.validation import check_is_fitted

from medlens.data.masks import label_map
from medlens.data.sample import Task
from medlens.errors import MedlensError
from medlens.models.classical.pixel_features import DEFAULT_SIGMAS, feature_names, pixel_features
from medlens.models.registry import ModelSpec, register


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class PixelForest(BaseEstimator):
    """Per-pixel random forest on a filter bank; images (C, *spatial), masks integer (*spatial).

    ``n_jobs=None`` uses every CPU this process may run on.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples_per_image: int = 5000,
        sigmas: Sequence[float] = DEFAULT_SIGMAS,
        color: str = "gray",
        min_samples_leaf: int = 1,
        chunk_pixels: int = 65536,
        n_jobs: int | None = None,
        seed: int = 0,
    ):
        self.n_estimators = n_estimators
        self.max_samples_per_image = max_samples_per_image
        self.sigmas = sigmas
        self.color = color
        self.min_samples_leaf = min_samples_leaf
        self.chunk_pixels = chunk_pixels
        self.n_jobs = n_jobs
        self.seed = seed

    def features(self, image: np.ndarray) -> np.ndarray:
        """The filter bank (F, *spatial) float32 of one image."""
        return pixel_features(image, self.sigmas, self.color)

    def fit(self, images, masks, fov=None) -> PixelForest:
        """Fit on images (C, *spatial), label maps (*spatial) and optional boolean FOV masks."""
        if len(images) != len(masks) or (fov is not None and len(fov) != len(images)):
            raise MedlensError(
                f"got {len(images)} images, {len(masks)} masks" + ("" if fov is None else f" and {len(fov)} FOV masks")
            )
        if not len(images):
            raise MedlensError("no images to train the pixel forest on")
        rng = np.random.default_rng(self.seed)
        X, y, w = [], [], []
        n_classes = 2
        first = np.asarray(images[0]).shape
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != len(first) or image.shape[0] != first[0]:
                raise MedlensError(
                    f"image {i} has shape {image.shape}, image 0 {first} (channels or dimensions differ)"
                )
            mask = label_map(masks[i], image.shape[1:])
            inside = None if fov is None else _fov(fov[i], image.shape[1:], f"FOV mask {i}")
            idx, weights = self._sample(mask, inside, rng)
            feats = self.features(image).reshape(-1, mask.size)
            X.append(feats[:, idx].T)
            y.append(mask.reshape(-1)[idx])
            w.append(weights)
            n_classes = max(n_classes, int(mask.max()) + 1)
        self.n_channels_, self.ndim_ = int(first[0]), len(first) - 1
        self.n_classes_ = n_classes
        self.feature_names_ = feature_names(self.n_channels_, self.ndim_, self.sigmas, self.color)
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            n_jobs=self.n_jobs or _cpu_count(),
            random_state=self.seed,
        )
        self.forest_.fit(np.concatenate(X), np.concatenate(y), sample_weight=np.concatenate(w))
        return self

    def _sample(self, mask: np.ndarray, inside: np.ndarray | None, rng: np.random.Generator):
        """Flat indices of the pixels to train on, balanced over classes, and their weights."""
        flat = mask.reshape(-1)
        candidates = np.flatnonzero(inside.reshape(-1)) if inside is not None else np.arange(flat.size)
        labels = flat[candidates]
        present = np.unique(labels)
        per_class = max(1, self.max_samples_per_image // max(1, len(present)))
        idx, weights = [], []
        for k in present:
            pool = candidates[labels == k]
            take = rng.choice(pool, size=min(per_class, pool.size), replace=False)
            idx.append(take)
            weights.append(np.full(take.size, pool.size / take.size / candidates.size, dtype=np.float64))
        return np.concatenate(idx), np.concatenate(weights)

    def predict_proba_image(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (K, *spatial) float32 of one image (C, *spatial)."""
        check_is_fitted(self, "forest_")
        image = np.asarray(image)
        if image.ndim - 1 != self.ndim_ or image.shape[0] != self.n_channels_:
            raise MedlensError(
                f"pixel forest was fitted on {self.n_channels_}-channel {self.ndim_}D images, "
                f"got an image of shape {image.shape}"
            )
        feats = self.features(image).reshape(len(self.feature_names_), -1)
        n_pixels = feats.shape[1]
        proba = np.zeros((self.n_classes_, n_pixels), dtype=np.float32)
        columns = self.forest_.classes_.astype(np.int64)
        for start in range(0, n_pixels, self.chunk_pixels):
            stop = min(start + self.chunk_pixels, n_pixels)
            chunk = np.ascontiguousarray(feats[:, start:stop].T)
            proba[columns, start:stop] = self.forest_.predict_proba(chunk).T
        return proba.reshape(self.n_classes_, *image.shape[1:])

    def predict_proba(self, images) -> np.ndarray | list[np.ndarray]:
        """Probabilities (N, K, *spatial) for an array of images, a list of (K, *spatial) for a list."""
        maps = [self.predict_proba_image(image) for image in images]
        return np.stack(maps) if isinstance(images, np.ndarray) else maps

    def predict(self, images) -> np.ndarray | list[np.ndarray]:
        """Label maps (argmax over classes, uint8), stacked for an array of images, a list otherwise."""
        labels = [p.argmax(axis=0).astype(np.uint8) for p in map(self.predict_proba_image, images)]
        return np.stack(labels) if isinstance(images, np.ndarray) else labels


def _fov(fov, spatial: tuple[int, ...], what: str) -> np.ndarray:
    fov = np.asarray(fov, dtype=bool)
    if fov.shape != spatial:
        raise MedlensError(f"{what} has shape {fov.shape}, its image {spatial}")
    if not fov.any():
        raise MedlensError(f"{what} is empty")
    return fov


def build(task=Task.SEGMENTATION, *, seed: int = 0, **params) -> PixelForest:
    """Unfitted :class:`PixelForest` for the segmentation task (``params`` as its constructor's)."""
    if Task(task) is not Task.SEGMENTATION:
        raise ValueError(f"pixel-forest is a segmentation model, not one for task '{Task(task).value}'")
    return PixelForest(seed=seed, **params)


PIXEL_FOREST = register(
    ModelSpec(
        name="pixel-forest",
        kind="classical",
        dims=(2, 3),
        tasks=(Task.SEGMENTATION.value,),
        description="random forest of 100 trees on per-pixel filter-bank features (intensity, Gaussian, "
        "gradient magnitude, LoG, Hessian eigenvalues, Frangi vesselness at sigma 1, 2, 4 px)",
        build=build,
    )
)
