"""Save and load network weights as ``.safetensors`` files only (never pickle).

Users with pretrained weights pass ``--weights FILE.safetensors``; :func:`load_weights` checks
every key and shape and either refuses with a :class:`~medlens.errors.MedlensError` listing the
mismatches (``strict=True``), or loads the matching tensors and reports the rest
(``strict=False``, e.g. a checkpoint with a different classification head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medlens.errors import BadInputError, MedlensError

MAX_LISTED = 8  # mismatches named in one error message


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, missing from the file, unexpected, wrong shape."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # key: (file, model)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file ({_listing(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not in the model ({_listing(self.unexpected)})")
        if self.mismatched:
            shapes = [f"{k} file {list(f)} vs model {list(m)}" for k, (f, m) in self.mismatched.items()]
            parts.append(f"{len(self.mismatched)} with another shape ({_listing(shapes)})")
        return "; ".join(parts)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", … {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` as safetensors (tensors copied to CPU, unshared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a clear error for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise MedlensError("weights must be a .safetensors file (pickled checkpoints are not loaded)", path)
    if not path.is_file():
        raise MedlensError("weights file not found", path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInputError(f"not a readable safetensors file ({e})", path) from None


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load weights from a local ``.safetensors`` file into ``model`` (in place).

    ``strict=True``: every key of the model must be in the file with the same shape and the
    file must have no other keys; otherwise nothing is loaded and a MedlensError lists the
    mismatches. ``strict=False``: the tensors whose key and shape match are loaded, the others
    are left as they are and listed in the returned :class:`LoadReport`.
    """
    tensors = read_weights(path)
    own = model.state_dict()
    report = LoadReport()
    for key, value in tensors.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            report.loaded.append(key)
    report.missing = [k for k in own if k not in tensors]
    if strict and not report.complete:
        raise MedlensError(f"weights do not fit the model: {report.summary()}", path)
    matching = {k: tensors[k].to(dtype=own[k].dtype) for k in report.loaded}
    model.load_state_dict(matching, strict=False)
    return report
