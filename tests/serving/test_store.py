"""The prediction store's memory level is bounded in bytes as well as in entries."""

from __future__ import annotations

import numpy as np

from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.store import PredictionStore


def _prediction() -> Prediction:
    return Prediction(
        model="m",
        model_sha256="0" * 64,
        task="binary",
        class_names=["a", "b"],
        probabilities={"a": 0.4, "b": 0.6},
        finding="b",
        confidence=0.6,
        uncertainty=0.1,
        uncertainty_method="entropy",
        abstain=False,
        abstain_reason=None,
        source=SourceInfo(kind="png", input_sha256="0" * 64),
    )


def test_large_images_are_kept_in_memory_only_up_to_the_byte_limit_and_read_back_from_disk(tmp_path):
    store = PredictionStore(tmp_path / "store", memory=256, memory_bytes=5 * 2**20)
    image = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)  # 1 MiB as uint8, 2 with the heatmap
    ids = []
    for _ in range(6):
        pred = _prediction()
        store.put(pred, image, heatmap=image)
        ids.append(pred.id)
    in_memory = list(store._memory.values())
    assert len(in_memory) == 2 and sum(e.nbytes for e in in_memory) <= 5 * 2**20
    first = store.get(ids[0])  # evicted from memory, read back from disk
    assert first is not None and first.display_image.shape == (1024, 1024)
    store.flush()
    for pid in ids * 2:  # read back and re-kept many times: the byte count follows what memory holds
        assert store.get(pid) is not None
        in_memory = list(store._memory.values())
        assert len(in_memory) == 2 and store._memory_nbytes == sum(e.nbytes for e in in_memory) <= 5 * 2**20


def test_one_entry_larger_than_the_limit_is_still_kept():
    store = PredictionStore(None, memory_bytes=1)
    pred = _prediction()
    store.put(pred, np.zeros((64, 64), np.float32))
    assert store.get(pred.id) is not None


def test_a_deferred_picture_is_made_off_the_answer_counted_as_its_source_and_written_as_made(tmp_path):
    """A small 2D picture without heatmap is drawn after the answer: the entry counts the source it
    holds until then (the memory bound holds), and what the disk and a GET get is the picture
    source_view draws, as uint8."""
    from medlens.inference.geometry import DeferredView, answer_view, source_view
    from medlens.serving.store import _to_u8

    source = np.random.default_rng(1).normal(100.0, 20.0, (1, 64, 48)).astype(np.float32)
    view = answer_view(source)
    assert isinstance(view, DeferredView) and view.shape == (64, 48) and view.nbytes == source.nbytes
    store = PredictionStore(tmp_path / "store", memory=1)
    first, second = _prediction(), _prediction()
    entry = store.put(first, view)
    assert entry.nbytes == source.nbytes == store._memory_nbytes
    store.flush()  # the writer made the picture to write it
    assert not isinstance(entry.display, DeferredView) and entry.nbytes == source.nbytes == store._memory_nbytes
    expected = _to_u8(source_view(source).image)
    assert np.array_equal(entry.display_image, expected)
    store.put(second, answer_view(source))  # the first leaves memory; read back from disk
    store.flush()
    assert store._memory_nbytes == source.nbytes
    assert np.array_equal(store.get(first.id).display_image, expected)
