"""The run-directory layout: the one place that knows artifact file names.

```
runs/NAME/
  config.yaml  fingerprint.json  splits.json  comparison.json  report.html  manifest.json
  study.json  audit.json  figures/ (montage.png, gradcam_*.png)
  models/MODEL/  model.safetensors | model.joblib, model.json (the card), ood.safetensors (the
                 out-of-distribution guard), config.yaml, metrics.json, predictions_{val,test}.csv,
                 decisions_{val,test}.csv, training_log.csv, checkpoints/
```
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from medlens.errors import MedlensError

OOD_GUARD_FILE = "ood.safetensors"


def is_global_zero() -> bool:
    """Whether this process is global rank 0, the one that writes run directories (from the
    launcher's environment; True when alone)."""
    if os.environ.get("RANK") is not None:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- run-level artifacts ----------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def study(self) -> Path:
        """study.json: the suite `medlens compare` trained, its budget estimate and timings."""
        return self.root / "study.json"

    @property
    def figures(self) -> Path:
        """figures/: images the evaluation writes for the report (Grad-CAM gallery)."""
        return self.root / "figures"

    @property
    def audit(self) -> Path:
        """audit.json: `medlens data audit` of the run's source (the report writes it when absent)."""
        return self.root / "audit.json"

    @property
    def montage(self) -> Path:
        """figures/montage.png: samples per class of the run's source (for the report)."""
        return self.figures / "montage.png"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> "ModelDir":
        return ModelDir(self.models_dir / name)

    @property
    def ensembles_dir(self) -> Path:
        """ensembles/: per ensemble of the evaluation, its decisions (no weights, no card: never served)."""
        return self.root / "ensembles"

    def ensemble(self, name: str) -> "ModelDir":
        return ModelDir(self.ensembles_dir / name)

    def model_names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / "model.json").is_file())

    def trained_models(self) -> list[str]:
        """:meth:`model_names`, or a one-line MedlensError when the folder or its models are missing."""

        if not self.root.is_dir():
            raise MedlensError("no such run directory", self.root)
        names = self.model_names()
        if not names:
            raise MedlensError("no trained model in the run (models/*/model.json)", self.root)
        return names

    def create(self) -> "RunDir":
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return self


class ModelDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def estimator(self) -> Path:
        return self.root / "model.joblib"

    @property
    def info(self) -> Path:
        return self.root / "model.json"

    @property
    def ood(self) -> Path:
        """The out-of-distribution guard's numbers (the card's ``ood`` field describes them)."""
        return self.root / OOD_GUARD_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def config(self) -> Path:
        """config.yaml: this model's resolved training settings (the run's config.yaml holds the run's)."""
        return self.root / "config.yaml"

    def predictions(self, split: str) -> Path:
        """The model's own (uncalibrated) probabilities on a split; written by training."""
        return self.root / f"predictions_{split}.csv"

    def decisions(self, split: str) -> Path:
        """Calibrated probabilities and the decision per case, as comparison.json counted them;
        written by the evaluation stage."""
        return self.root / f"decisions_{split}.csv"

    def external_predictions(self, source_name: str) -> Path:
        """Per-case predictions on an external source (``medlens evaluate RUN --on SOURCE``); kept
        apart from the internal ``predictions_*.csv`` / ``decisions_*.csv``, which it never touches."""
        return self.root / "external" / source_name / "predictions.csv"

    def external_segmentation_cases(self, source_name: str) -> Path:
        """Per-case, per-class segmentation metrics on an external source (``evaluate --on``)."""
        return self.root / "external" / source_name / "segmentation_cases.csv"

    def segmentations(self, split: str) -> Path:
        """Folder of per-case segmentation predictions on a split (``ID.npz``: ``labels``, and
        ``foreground`` for two-class tasks); written by training."""
        return self.root / f"segmentations_{split}"

    def segmentation_cases(self, split: str) -> Path:
        """Per-case, per-class segmentation metrics on a split; written by the evaluation stage."""
        return self.root / f"segmentation_cases_{split}.csv"

    @property
    def training_log(self) -> Path:
        return self.root / "training_log.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def samples_png(self) -> Path:
        return self.root / "gan_samples.png"

    def create(self) -> "ModelDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


# -- small, safe file helpers used by every stage ---------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    ``durable=False`` skips the fsync: a killed process still leaves the whole file (the page
    cache survives it), but a power loss may not; for callers that commit many files at once and
    check them on recovery (batch prediction's journal)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts get ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN and infinities become null, which every JSON reader accepts), written atomically."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _finite(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, yaml.safe_dump(obj, sort_keys=False).encode())


def read_yaml(path: str | Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
