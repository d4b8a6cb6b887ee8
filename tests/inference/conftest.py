"""Small generated image sets written as files (PNG, NIfTI) with CSV manifests, one per task.

Each set has a learnable signal (bright squares) and ``split`` columns (train 24 / val 12 /
test 12), so a one-epoch model is fitted in seconds and every test case is a file that
``medlens predict``, the REST API and the Python API can read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

SPLITS = (("train", 24), ("val", 12), ("test", 12))
SIDE_2D, SIDE_3D = 32, 16


def _image_2d(rng: np.random.Generator, spots: list[int]) -> np.ndarray:
    img = rng.normal(60, 12, (SIDE_2D, SIDE_2D))
    corners = [(4, 4), (4, 20), (20, 4), (20, 20)]
    for k in spots:
        r, c = corners[k]
        img[r : r + 8, c : c + 8] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def _volume(rng: np.random.Generator, positive: bool) -> np.ndarray:
    vol = rng.normal(100, 20, (SIDE_3D,) * 3).astype(np.float32)
    if positive:
        vol[5:11, 5:11, 5:11] += 150
    return vol


def _write(root: Path, name: str, task: str) -> Path:
    """Write the set ``name`` under ``root``; returns its manifest (path,label,split)."""
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(sum(name.encode()))
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in SPLITS:
        for i in range(n):
            if task == "binary2d":
                label = ["normal", "lesion"][i % 2]
                spots = [i % 4] if label == "lesion" else []
            elif task == "multiclass2d":
                label = ["a", "b", "c"][i % 3]
                spots = [i % 3]
            elif task == "multilabel2d":
                label = ["a", "b", "a|b"][i % 3]
                spots = [k for k, c in enumerate("ab") if c in label.split("|")]
            else:
                label = ["normal", "lesion"][i % 2]
                spots = []
            if task == "binary3d":
                rel = f"{split}_{i:03d}.nii.gz"
                nib.save(nib.Nifti1Image(_volume(rng, label == "lesion"), np.eye(4)), str(folder / rel))
            else:
                rel = f"{split}_{i:03d}.png"
                Image.fromarray(_image_2d(rng, spots)).save(folder / rel)
            rows.append({"path": rel, "label": label, "split": split})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory) -> dict[str, Path]:
    """Manifests of the sets: binary2d, multiclass2d, multilabel2d (PNG) and binary3d (NIfTI)."""
    root = tmp_path_factory.mktemp("inference-sets")
    return {task: _write(root, task, task) for task in ("binary2d", "multiclass2d", "multilabel2d", "binary3d")}
