"""A per-pixel (per-voxel) filter bank for classical segmentation, for 2D and 3D images.

:func:`pixel_features` maps one image (C, *spatial), float in roughly [0, 1], to a stack
(F, *spatial) of float32 features. The filters are scipy.ndimage's and scikit-image's; this
module only chooses them, their scales and the layout.

Features, in this order (:func:`feature_names` gives the names):

``intensity``
    each input channel as it is, and the grey image when C > 1 (luminance, ITU-R BT.709 weights as
    ``skimage.color.rgb2gray``, for RGB; the channel mean otherwise).
then for each filtered plane (the grey image, or each channel with ``color="channels"``) and each
sigma of ``sigmas`` (in pixels along every axis; default 1, 2, 4):
``gauss``
    Gaussian smoothing (``scipy.ndimage.gaussian_filter``).
``gradmag``
    gradient magnitude of Gaussian derivatives (``scipy.ndimage.gaussian_gradient_magnitude``).
``log``
    Laplacian of Gaussian (``scipy.ndimage.gaussian_laplace``): blobs and line centres.
``hessian0`` .. ``hessian{D-1}``
    the D eigenvalues of the Hessian, largest first (``skimage.feature.hessian_matrix`` and
    ``hessian_matrix_eigvals``): local curvature, tubes and sheets.
``frangi_dark``, ``frangi_bright``
    Frangi vesselness at that single scale (``skimage.filters.frangi``) for dark ridges (vessels in a
    fundus photograph) and bright ones (contrast-filled vessels), so either polarity is learnt.

F = C (+1 when C > 1) + P x len(sigmas) x (5 + D), with P filtered planes; a grey 2D image with the
default sigmas gives 22 features, a 3D volume 25. Every filter runs vectorised over the whole image
with reflecting borders; memory is one (F, *spatial) float32 stack per image plus a few float64
temporaries of one plane.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.feature import hessian_matrix, hessian_matrix_eigvals
from skimage.filters import frangi

DEFAULT_SIGMAS = (1.0, 2.0, 4.0)
COLORS = ("gray", "channels")
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # skimage.color.rgb2gray


def feature_names(
    n_channels: int, ndim: int, sigmas: Sequence[float] = DEFAULT_SIGMAS, color: str = "gray"
) -> list[str]:
    """Names of the features :func:`pixel_features` returns, in its order (e.g. ``log_s2``)."""
    names = [f"intensity_c{c}" for c in range(n_channels)] + (["intensity_gray"] if n_channels > 1 else [])
    planes = ["gray"] if color == "gray" or n_channels == 1 else [f"c{c}" for c in range(n_channels)]
    per_scale = ["gauss", "gradmag", "log", *(f"hessian{i}" for i in range(ndim)), "frangi_dark", "frangi_bright"]
    for plane in planes:
        for s in sigmas:
            names += [f"{kind}_s{s:g}" + ("" if plane == "gray" else f"_{plane}") for kind in per_scale]
    return names


def pixel_features(image: np.ndarray, sigmas: Sequence[float] = DEFAULT_SIGMAS, color: str = "gray") -> np.ndarray:
    """The filter bank (F, *spatial) float32 of one image (C, H, W) or volume (C, D, H, W)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (3, 4):
        raise ValueError(f"expected one image (C, H, W) or volume (C, D, H, W), got shape {image.shape}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, not '{color}'")
    n_channels, ndim = image.shape[0], image.ndim - 1
    names = feature_names(n_channels, ndim, sigmas, color)
    out = np.empty((len(names), *image.shape[1:]), dtype=np.float32)
    out[:n_channels] = image
    i = n_channels
    if n_channels > 1:
        out[i] = _gray(image)
        i += 1
    planes = list(image) if color == "channels" or n_channels == 1 else [out[n_channels]]
    for plane in planes:
        for s in sigmas:
            i = _scale_features(plane, float(s), out, i)
    assert i == len(names)
    return out


def _gray(image: np.ndarray) -> np.ndarray:
    if image.shape[0] == 3:
        return np.tensordot(_LUMA, image, axes=1)
    return image.mean(axis=0)


def _scale_features(plane: np.ndarray, sigma: float, out: np.ndarray, i: int) -> int:
    """Write the features of ``plane`` at ``sigma`` into ``out[i:]``; returns the next index."""
    ndimage.gaussian_filter(plane, sigma, output=out[i], mode="reflect")
    ndimage.gaussian_gradient_magnitude(plane, sigma, output=out[i + 1], mode="reflect")
    ndimage.gaussian_laplace(plane, sigma, output=out[i + 2], mode="reflect")
    i += 3
    hessian = hessian_matrix(plane, sigma=sigma, mode="reflect", order="rc", use_gaussian_derivatives=False)
    eigvals = hessian_matrix_eigvals(hessian)
    out[i : i + plane.ndim] = eigvals
    i += plane.ndim
    del hessian, eigvals
    for dark in (True, False):
        out[i] = frangi(plane, sigmas=[sigma], black_ridges=dark, mode="reflect")
        i += 1
    return i
