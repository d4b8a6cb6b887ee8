"""The Python API: load a trained model bundle and predict, with the very answer the service gives.

>>> from medlens.api import load_model
>>> model = load_model("runs/demo")            # verified against the run's manifest.json
>>> result = model.predict("chest.png")         # a file, a DICOM series folder, or an array
>>> result.prediction.finding, result.prediction.probabilities

``load_model`` returns a :class:`medlens.serving.predictor.Predictor`; ``model.bundle`` is the
underlying :class:`medlens.inference.bundle.Bundle` (``preprocess``, ``raw_proba``,
``predict_proba``, ``decide``, ``explain``) for batch work on arrays already in memory.
"""

from __future__ import annotations

from pathlib import Path

from medlens.inference.bundle import Bundle
from medlens.inference.card import ModelCard, read_card
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.predictor import PredictionResult, Predictor

__all__ = [
    "Bundle",
    "ModelCard",
    "Prediction",
    "PredictionResult",
    "Predictor",
    "SourceInfo",
    "load_model",
    "read_card",
]


def load_model(
    run: str | Path, model: str | None = None, *, uncertainty: str | None = None, pseudonym_key: str | None = None
) -> Predictor:
    """Model ``model`` of the run directory ``run`` (default: the only one, or the best by
    validation AUC), verified against the manifest; see :meth:`Predictor.from_run`."""
    return Predictor.from_run(run, model, uncertainty=uncertainty, pseudonym_key=pseudonym_key)
