"""The bundle answers with BatchNorm folded and through its exported ONNX graph, each only when
that leaves the outputs as trained."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from medlens.inference import bundle as bundle_module
from medlens.inference import graph as graph_module
from medlens.inference.bundle import Bundle
from medlens.models.deep.encoder import head_name


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


def _without_graph(b: Bundle) -> Bundle:
    """The same loaded bundle answering with PyTorch only."""
    return Bundle(b.card, name=b.name, net=b.net, weights=b.weights, uncertainty=b.abstention.method, guard=b.guard)


def test_loaded_bundle_answers_through_its_graph_as_pytorch_does(tiny_run):
    b = Bundle.load(tiny_run)
    assert b.graph is not None
    # the export's own feature hook stayed on its copy: the shared network has only the bundle's tap
    assert len(b.net.get_submodule(head_name(b.net))._forward_pre_hooks) == 1
    torch_only = _without_graph(b)
    x = np.random.default_rng(1).random((5, b.card.in_channels, 32, 32)).astype(np.float32)
    probs, feats = b.raw_proba_and_features(x, batch_size=2)  # batches of 2, 2 and 1: the dynamic batch axis
    expected_probs, expected_feats = torch_only.raw_proba_and_features(x)
    assert feats is not None and expected_feats is not None and feats.shape == expected_feats.shape
    assert np.abs(probs - expected_probs).max() <= 1e-6
    assert np.abs(feats - expected_feats).max() <= 1e-5 * max(1.0, np.abs(expected_feats).max())
    assert b.raw_proba_and_features(x, features=False)[1] is None


def test_test_time_augmentation_through_the_graph_equals_pytorch(tiny_run, monkeypatch):
    monkeypatch.setattr(bundle_module.unc, "has_dropout", lambda net: False)  # no MC dropout: the draws are TTA views
    b = Bundle.load(tiny_run, uncertainty="predictive_entropy")
    assert b.graph is not None and b._mc is None
    x = np.random.default_rng(2).random((3, b.card.in_channels, 32, 32)).astype(np.float32)
    raw, feats, draws = b.probe(x, features=True)
    expected_raw, expected_feats, expected_draws = _without_graph(b).probe(x, features=True)
    assert (
        draws is not None
        and expected_draws is not None
        and draws.shape == expected_draws.shape == (3, 3, b.card.num_outputs)
    )
    assert np.abs(raw - expected_raw).max() <= 1e-6 and np.abs(draws - expected_draws).max() <= 1e-6
    assert feats is not None and expected_feats is not None
    assert np.abs(feats - expected_feats).max() <= 1e-5 * max(1.0, np.abs(expected_feats).max())


def test_mc_dropout_draws_through_their_graph_equal_pytorch_alone_or_batched(tiny_run):
    b = Bundle.load(tiny_run, uncertainty="predictive_entropy")
    assert b._mc is not None and b._mc.expands and b.draws_graph is not None
    x = np.random.default_rng(4).random((3, b.card.in_channels, 32, 32)).astype(np.float32)
    raw, feats, draws = b.probe(x, features=True)
    expected_raw, expected_feats, expected_draws = _without_graph(b).probe(x, features=True)
    assert draws is not None and expected_draws is not None
    assert draws.shape == expected_draws.shape == (b._mc.passes, 3, b.card.num_outputs)
    assert np.abs(raw - expected_raw).max() <= 1e-6 and np.abs(draws - expected_draws).max() <= 1e-6
    assert np.abs(draws - draws[:1]).max() > 1e-3  # the draws differ from each other: masks were applied
    assert feats is not None and expected_feats is not None
    assert np.abs(feats - expected_feats).max() <= 1e-5 * max(1.0, np.abs(expected_feats).max())
    alone = b.probe(x[1:2], features=False)[2]
    assert alone is not None and np.abs(alone[:, 0] - draws[:, 1]).max() <= 1e-6


def test_a_graph_outside_the_tolerance_is_not_used(tiny_run, monkeypatch, caplog):
    monkeypatch.setattr(graph_module, "GRAPH_TOLERANCE", -1.0)
    with caplog.at_level(logging.WARNING, logger="medlens.inference.graph"):
        b = Bundle.load(tiny_run, uncertainty="predictive_entropy")
    assert b.graph is None and b.draws_graph is None
    assert "answering with PyTorch" in caplog.text
    x = np.random.default_rng(3).random((2, b.card.in_channels, 32, 32)).astype(np.float32)
    assert b.raw_proba(x).shape == (2, b.card.num_outputs)


def test_a_network_that_does_not_export_answers_with_pytorch(tiny_run, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with caplog.at_level(logging.WARNING, logger="medlens.inference.graph"):
        b = Bundle.load(tiny_run, uncertainty="predictive_entropy")
    assert b.graph is None and b.draws_graph is None
    assert "no ONNX graph (RuntimeError: operator not supported)" in caplog.text
