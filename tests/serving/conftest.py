"""Tiny trained model bundles and input files shared by the serving tests (made once per session).

``tiny_run``: cnn-small, one epoch on 24 samples per split of ``synthetic:chest2d@32``;
``tiny_classical_run``: the ELM on the same data. ``serving_inputs``: one chest phantom written
as PNG, JPEG, 2D NIfTI and DICOM (plus a three-image DICOM study, a CT series and a non-image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SYNTH = "chest2d@32"
SOURCE = f"synthetic:{SYNTH}"


def _train(tmp_path_factory, name: str, model: str) -> Path:
    """Train once per session: the CLI tests import these fixtures and reuse the same run."""
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    out = tmp_path_factory.getbasetemp() / "serving-runs" / name
    if (out / "manifest.json").is_file():
        return out
    config = TrainConfig(
        source=SOURCE, model=model, out=str(out), epochs=1, max_samples=24, progress=False, accelerator="cpu", seed=0
    )
    train(config)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Run directory with one deep model (cnn-small) and its manifest."""
    return _train(tmp_path_factory, "deep", "cnn-small")


@pytest.fixture(scope="session")
def tiny_classical_run(tmp_path_factory) -> Path:
    """Run directory with one classical model (elm) and its manifest."""
    return _train(tmp_path_factory, "classical", "elm")


@pytest.fixture(scope="session")
def serving_inputs(tmp_path_factory) -> dict[str, Path]:
    """Input files: png, jpeg, nifti (2D), nifti3d, dicom (one DX image), study (a folder of three
    DX images, one series each), ct_series (a 4-slice CT folder), ct_slice (one CT image), text."""
    root = tmp_path_factory.getbasetemp() / "serving-inputs"
    paths = {
        "png": root / "chest.png",
        "jpeg": root / "chest.jpg",
        "nifti": root / "chest.nii.gz",
        "nifti3d": root / "volume.nii.gz",
        "text": root / "notes.txt",
        "study": root / "synth" / "images",
        "ct_series": root / "ct",
        "ct_slice": root / "ct" / "0001.dcm",
    }
    done = root / ".done"
    if not done.is_file():
        _write_inputs(root, paths)
        done.touch()
    paths["dicom"] = sorted(paths["study"].glob("*.dcm"))[0]
    return paths


def _write_inputs(root: Path, paths: dict[str, Path]) -> None:
    import nibabel as nib
    from PIL import Image

    from medlens.data.sources.synthetic import open_synthetic
    from medlens.data.synth_writer import nifti_image, write_ct_series, write_synthetic

    root.mkdir(parents=True, exist_ok=True)
    sample = open_synthetic(SYNTH).load(0)
    image = sample.image[0].astype(np.uint8)
    Image.fromarray(image).save(paths["png"])
    Image.fromarray(image).save(paths["jpeg"], quality=95)
    nib.save(nifti_image(image.astype(np.float32)), paths["nifti"])
    nib.save(nifti_image(np.stack([image] * 4).astype(np.float32)), paths["nifti3d"])
    paths["text"].write_text("not an image\n")

    write_synthetic(SYNTH, root / "synth", "dicom", n_per_class=1, show_progress=False)

    ct = np.full((4, 32, 32), -800.0)
    ct[:, 8:24, 8:24] = 40.0
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    write_ct_series(ct, affine, paths["ct_series"], patient_id="P-CT", study_uid="1.2.3.4.5", series_uid="1.2.3.4.5.6")
