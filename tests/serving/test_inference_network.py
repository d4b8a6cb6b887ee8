"""The bundle answers with BatchNorm folded, only when that leaves the logits as trained."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from medlens.inference import bundle as bundle_module
from medlens.inference.bundle import Bundle


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_loaded_bundle_folds_batchnorm_and_answers_as_the_trained_network(tiny_run):
    b = Bundle.load(tiny_run)
    trained = b.trained_network()
    assert _batchnorms(trained) == 4 and _batchnorms(b.net) == 0
    x = np.random.default_rng(0).random((3, b.card.in_channels, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = bundle_module.logits_to_probs(trained(torch.from_numpy(x)), b.task)
    assert np.abs(b.raw_proba(x) - expected).max() <= 1e-6


def test_a_fold_outside_the_tolerance_is_not_used(tiny_run, monkeypatch, caplog):
    monkeypatch.setattr(bundle_module, "FOLD_TOLERANCE", -1.0)  # no difference is small enough
    with caplog.at_level(logging.WARNING, logger="medlens.inference.bundle"):
        b = Bundle.load(tiny_run)
    assert _batchnorms(b.net) == 4
    assert "unfolded network" in caplog.text


def test_trained_network_needs_a_network_weights_file(tiny_classical_run):
    import pytest

    from medlens.errors import MedlensError

    with pytest.raises(MedlensError, match="no network weights file"):
        Bundle.load(tiny_classical_run).trained_network()
