"""assign_splits: source splits kept, carving, stratified patient-level splits, determinism, splits.json."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medlens.data.sample import Dataset, Record, Task
from medlens.data.splits import assign_splits, check_splits, read_splits, write_splits
from medlens.errors import BadInputError, MedlensError


class _Meta(Dataset):
    def _load(self, record):  # splitting never loads pixels
        raise AssertionError("splits must not load pixels")


def _dataset(n_patients=200, per_patient=(1, 4), classes=3, split_of=None, multilabel=False, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        label = int(rng.choice(classes, p=[0.6, 0.3, 0.1][:classes] if classes == 3 else None))
        for k in range(int(rng.integers(*per_patient, endpoint=True))):
            lab = tuple(int(v) for v in rng.random(4) < [0.5, 0.2, 0.1, 0.05]) if multilabel else label
            records.append(Record(f"p{p}/{k}", lab, f"p{p}", f"x{p}_{k}", split=split_of(p) if split_of else None))
    task = Task.MULTILABEL if multilabel else Task.MULTICLASS
    names = [f"c{i}" for i in range(4 if multilabel else classes)]
    return _Meta("t", records, task=task, class_names=names, dims=2)


def _patients(ds, ids):
    return {ds.records[ds.index_of(i)].patient_id for i in ids}


def test_patient_level_and_stratified():
    ds = _dataset()
    sp = assign_splits(ds, seed=1)
    assert sorted(sum(sp.values(), [])) == sorted(r.id for r in ds.records)
    pats = {s: _patients(ds, ids) for s, ids in sp.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    n = len(ds)
    assert abs(len(sp["val"]) / n - 0.15) < 0.02 and abs(len(sp["test"]) / n - 0.15) < 0.02
    overall = Counter(r.label for r in ds.records)
    for s, ids in sp.items():
        c = Counter(ds.records[ds.index_of(i)].label for i in ids)
        for k in overall:
            assert abs(c[k] / len(ids) - overall[k] / n) < 0.03, (s, k)


def test_deterministic_by_seed():
    ds = _dataset()
    assert assign_splits(ds, seed=3) == assign_splits(ds, seed=3)
    assert assign_splits(ds, seed=3) != assign_splits(ds, seed=4)


def test_multilabel_stratifies_each_label():
    ds = _dataset(n_patients=400, per_patient=(1, 1), multilabel=True)
    sp = assign_splits(ds, seed=0)
    y = ds.labels()
    for ids in sp.values():
        idx = [ds.index_of(i) for i in ids]
        np.testing.assert_allclose(y[idx].mean(axis=0), y.mean(axis=0), atol=0.04)


def test_source_splits_kept_and_val_carved():
    full = _dataset(split_of=lambda p: ("train", "val", "test")[p % 3])
    sp = assign_splits(full, seed=0)
    assert all(full.records[full.index_of(i)].split == s for s, ids in sp.items() for i in ids)
    tt = _dataset(split_of=lambda p: "test" if p % 5 == 0 else "train")
    sp = assign_splits(tt, seed=0, val_fraction=0.2)
    assert set(sp["test"]) == {r.id for r in tt.records if r.split == "test"}
    train_src = [r for r in tt.records if r.split == "train"]
    assert abs(len(sp["val"]) / len(train_src) - 0.2) < 0.03
    assert not (_patients(tt, sp["val"]) & _patients(tt, sp["train"]))


def test_unlabelled_and_bad_fractions():
    records = [Record(f"s{i}", None, f"s{i}", "o") for i in range(20)]
    ds = _Meta("seg", records, task=Task.SEGMENTATION, class_names=["background", "1"], dims=3)
    sp = assign_splits(ds, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    with pytest.raises(MedlensError, match="fractions"):
        assign_splits(ds, seed=0, val_fraction=0.6, test_fraction=0.5)


def test_splits_json_roundtrip_and_errors(tmp_path):
    ds = _dataset(n_patients=30)
    sp = assign_splits(ds, seed=7)
    write_splits(tmp_path / "splits.json", sp, seed=7, source="synthetic:x")
    back = read_splits(tmp_path / "splits.json")
    assert back == {"seed": 7, "source": "synthetic:x", "splits": sp, "splitting": None}
    check_splits(ds, back["splits"])
    with pytest.raises(MedlensError, match="not in"):
        check_splits(ds, {"train": ["nope"]})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadInputError, match="bad.json: not valid JSON"):
        read_splits(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text('{"seed": 1, "splits": {"train": ["a"], "test": ["a"]}}')
    with pytest.raises(BadInputError, match="in both 'train' and 'test'"):
        read_splits(tmp_path / "dup.json")


def test_nih_patient_resplit_shares_no_patient_and_keeps_the_given_proportions(shared_data):
    from medlens.data.leakage import plan_splits, splitting_summary
    from medlens.data.sources import open_source
    from tests.conftest import need

    ds = open_source(str(need(shared_data / "nih_cxr_1000" / "metadata.csv")))
    given = {name: sum(r.split == name for r in ds.records) for name in ("train", "val", "test")}
    plan = plan_splits(ds, seed=0, resplit="patient")
    assert {k: len(v) for k, v in plan.splits.items()} == given  # 600 / 200 / 200
    summary = splitting_summary({"splits": plan.splits, "splitting": plan.splitting()}, ds)
    assert summary["patients_across_splits"] == 0 and summary["patients_across_given_splits"] == 30
    assert summary["description"] == f"split: patient-level re-split, {plan.moved_patients} patients moved"
    assert plan.moved_patients >= 30
