"""The model registry: a missing medlens module is a bug and raises."""

from __future__ import annotations

import pytest

from medlens.models import registry


def test_all_models_lists_both_kinds():
    kinds = {spec.kind for spec in registry.all_models()}
    assert kinds == {"classical", "deep"}


def test_a_missing_model_module_raises(monkeypatch):
    monkeypatch.setattr(registry, "MODEL_MODULES", (*registry.MODEL_MODULES, "medlens.models.no_such_module"))
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        registry.all_models()
