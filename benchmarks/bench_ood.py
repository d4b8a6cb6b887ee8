"""Out-of-distribution guard on the real data: what each model accepts, and what it refuses.

For each real-data model (PneumoniaMNIST, RetinaMNIST, Brain Tumor MRI, NIH chest X-ray,
AdrenalMNIST3D) this trains one cnn-small / cnn-2.5d bundle (the guard is fitted by training:
thresholds on validation, 99% by default), then sends through the one prediction path
(``medlens.api.load_model``) its own test split and every other real set in the data folder:
the other studies' test images, the hippocampus MRI volumes, the two retinal photograph sets,
the DICOM studies and series (MR, CT), the NIfTI CT and medlens's synthetic sets.

An input counts as *refused* when the predictor rejects it (wrong dimensionality, modality or
channels: a one-line error) or the guard puts it out of scope (size, colour, intensity or
feature distance); otherwise *accepted*. The own test split's metrics are given on all images
and on the accepted ones.

    .venv/bin/python benchmarks/bench_ood.py [--data ../shared/data] [--per-set 300]

Trained runs are kept in ``benchmarks/.ood/`` (delete it to retrain). Writes the section
"Out-of-distribution guard" of BENCHMARKS.md and ``benchmarks/.ood/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._record import record_section  # noqa: E402

# model name: (source relative to the data folder, model, extra train settings)
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "pneumoniamnist": ("medmnist/pneumoniamnist.npz", "cnn-small", {"epochs": 15}),
    "retinamnist": ("medmnist/retinamnist.npz", "cnn-small", {"epochs": 30}),
    "brain_tumor_mri": ("brain_tumor_mri", "cnn-small", {"epochs": 6, "img_size": 64}),
    "nih_cxr_1000": ("nih_cxr_1000", "cnn-small", {"epochs": 20}),
    "adrenalmnist3d": ("medmnist/adrenalmnist3d.npz", "cnn-2.5d", {"epochs": 15}),
}
TITLES = {
    "pneumoniamnist": "PneumoniaMNIST",
    "retinamnist": "RetinaMNIST",
    "brain_tumor_mri": "Brain Tumor MRI",
    "nih_cxr_1000": "NIH CXR",
    "adrenalmnist3d": "AdrenalMNIST3D",
}


def train_all(data: Path, work: Path, names: list[str], epochs: int | None = None) -> dict[str, Path]:
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    runs = {}
    for name in names:
        source, model, extra = MODELS[name]
        extra = {**extra, "epochs": epochs or extra["epochs"]}
        out = work / name
        if not (out / "models" / model / "ood.safetensors").is_file():
            print(f"training {model} on {name} ...", flush=True)
            started = time.perf_counter()
            train(TrainConfig(source=str(data / source), model=model, out=str(out), seed=0, accelerator="cpu", **extra))
            print(f"  {time.perf_counter() - started:.0f} s", flush=True)
        runs[name] = out
    return runs


# -- the sets an input can come from -------------------------------------------------------------------
Item = tuple[str, Callable[[Any], Any]]  # (label, predict(model) -> result)


def _dataset_items(source: Path, split: str | None, limit: int | None, seed: int = 0) -> Iterator[Item]:
    from medlens.data.sources import open_source

    ds = open_source(str(source))
    ids = [r.id for r in ds.records if split is None or r.split == split or r.split is None]
    if limit and len(ids) > limit:
        ids = [ids[i] for i in sorted(np.random.default_rng(seed).choice(len(ids), limit, replace=False))]
    for i in ids:
        yield str(i), lambda m, i=i: m.predict(ds.load(i).image)


def _file_items(paths: list[Path], limit: int | None, seed: int = 0) -> Iterator[Item]:
    from medlens.serving.predictor import find_inputs

    items, _ = find_inputs(paths)
    if limit and len(items) > limit:
        items = [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), limit, replace=False))]
    for it in items:
        if it.files:
            yield it.label, lambda m, it=it: m.predict_files(it.files)
        else:
            yield it.label, lambda m, it=it: m.predict_path(it.path)


def other_sets(data: Path, per_set: int) -> dict[str, Callable[[], Iterator[Item]]]:
    """Every real (and synthetic) set, by name: a factory of its items."""
    sets: dict[str, Callable[[], Iterator[Item]]] = {}
    for name, (source, _, _) in MODELS.items():
        split = "test"
        sets[name] = lambda s=data / source, sp=split: _dataset_items(s, sp, per_set)
    sets["hippocampus_msd"] = lambda: _file_items(
        sorted((data / "hippocampus_msd" / "images").glob("*.nii.gz")), per_set
    )
    sets["chasedb1"] = lambda: _file_items(sorted((data / "chasedb1").glob("Image_*.jpg")), per_set)
    sets["hrf"] = lambda: _file_items(
        sorted(p for p in (data / "hrf" / "images").iterdir() if p.suffix.lower() == ".jpg"), per_set
    )
    sets["dicom MR study"] = lambda: _file_items([data / "dicom" / "tcia_brain_mr_study"], per_set)
    sets["dicom MR (dcm_qa_nih)"] = lambda: _file_items([data / "dicom" / "dcm_qa_nih" / "In"], per_set)
    sets["dicom CT series"] = lambda: _file_items(
        [data / "dicom" / "ct_series_17", data / "dicom" / "ct_series_4"], per_set
    )
    sets["nifti CT"] = lambda: _file_items([data / "nifti_ct_example" / "example_ct_sm.nii.gz"], per_set)
    sets["synthetic chest2d"] = lambda: _dataset_items(Path("synthetic:chest2d"), None, min(per_set, 100))
    sets["synthetic nodule3d"] = lambda: _dataset_items(Path("synthetic:nodule3d"), None, min(per_set, 60))
    return sets


def classify(predictor: Any, make: Callable[[Any], Any]) -> tuple[str, Any]:
    """("accepted" | reason of refusal, result or None)."""
    from medlens.errors import MedlensError

    try:
        result = make(predictor)
    except MedlensError as e:
        text = str(e)
        kind = (
            "dims"
            if "D image" in text or "cannot go to model" in text
            else "modality"
            if "trained on" in text
            else "input"
        )
        return f"check:{kind}", None
    reasons = result.prediction.out_of_scope
    if not reasons:
        return "accepted", result
    kind = reasons[0]["check"]
    return f"guard:{kind}", result


def own_test(predictor: Any, name: str, data: Path, run: Path) -> dict[str, Any]:
    """Acceptance and test metrics (all vs accepted) on the model's own test split."""
    from medlens.data.sources import open_source
    from medlens.evaluation.metrics import classification_metrics

    ds = open_source(str(data / MODELS[name][0]))
    test_ids = json.loads((run / "splits.json").read_text())["splits"]["test"]
    verdicts, probs, labels = [], [], []
    for i in test_ids:
        sample = ds.load(i)
        verdict, result = classify(predictor, lambda m, s=sample: m.predict(s.image))
        verdicts.append(verdict)
        labels.append(sample.label)
        probs.append(list(result.prediction.probabilities.values()) if result else None)
    keep = np.array([v == "accepted" for v in verdicts])
    y, p = np.asarray(labels), np.asarray([q for q in probs], dtype=float)
    task, t = predictor.card.task, predictor.card.decision_threshold
    every = classification_metrics(y, p, task, threshold=t)
    kept = classification_metrics(y[keep], p[keep], task, threshold=t)
    return {
        "n": len(test_ids),
        "accepted": float(keep.mean()),
        "reasons": dict(Counter(v for v in verdicts if v != "accepted")),
        "all": {k: every[k] for k in ("auc", "acc")},
        "accepted_only": {k: kept[k] for k in ("auc", "acc")},
    }


def markdown(results: dict[str, Any], names: list[str], per_set: int) -> str:
    lines = [
        "Each column is one model (cnn-small; cnn-2.5d for AdrenalMNIST3D) trained by `medlens train` with the",
        "guard fitted on its training split and thresholds chosen on its validation split to accept 99%.",
        "First row: share of the model's **own test split accepted** (goal >= 97%). Other rows: share of",
        f"each other set **refused** (goal >= 99%), at most {per_set} inputs per set (seeded sample; n in",
        "brackets). Refused = rejected by the predictor's input checks (dimensionality, modality, channels)",
        "or put out of scope by the guard (size, colour, intensity profile, feature distance).",
        "",
        "| set | " + " | ".join(TITLES[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    row = ["own test split: accepted"]
    for n in names:
        own = results[n]["own"]
        row.append(f"**{own['accepted']:.1%}** ({own['n']})")
    lines.append("| " + " | ".join(row) + " |")
    sets = [s for s in results[names[0]]["others"]]
    for s in sets:
        row = [s]
        for n in names:
            if s == n:
                row.append("(own)")
                continue
            o = results[n]["others"][s]
            row.append(f"{o['refused']:.1%} ({o['n']})" if o["n"] else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Test metrics of each model on its own test split, all images vs the accepted ones only:", ""]
    lines += ["| model | n | accepted | AUC all | AUC accepted | ACC all | ACC accepted | refused own images by |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for n in names:
        own = results[n]["own"]
        why = ", ".join(f"{k} {v}" for k, v in sorted(own["reasons"].items())) or "-"
        lines.append(
            f"| {TITLES[n]} | {own['n']} | {own['accepted']:.1%} | {own['all']['auc']:.3f} | "
            f"{own['accepted_only']['auc']:.3f} | {own['all']['acc']:.3f} | {own['accepted_only']['acc']:.3f} | {why} |"
        )
    lines += [
        "",
        "The distances alone: of the inputs that reached the guard (right dimensionality, modality and",
        "channels), the share that the intensity or feature distance refuses by itself, whatever the",
        "size and colour rules say (they decide most of the table above):",
        "",
        "| set | " + " | ".join(TITLES[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for s in sets:
        row = [s]
        for n in names:
            o = results[n]["others"][s]
            row.append(
                "(own)" if s == n else f"{o['refused_by_distances']:.1%} ({o['guarded']})" if o["guarded"] else "-"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Why other sets were refused (counts over all other sets, first reason per input):", ""]
    lines += [
        "| model | "
        + " | ".join(
            [
                "check:dims",
                "check:modality",
                "check:input",
                "guard:size",
                "guard:colour",
                "guard:intensity",
                "guard:features",
                "accepted",
            ]
        )
        + " |"
    ]
    lines += ["|---|" + "---|" * 8]
    for n in names:
        total: Counter = Counter()
        for s, o in results[n]["others"].items():
            if s != n:
                total.update(o["verdicts"])
        keys = [
            "check:dims",
            "check:modality",
            "check:input",
            "guard:size",
            "guard:colour",
            "guard:intensity",
            "guard:features",
            "accepted",
        ]
        lines.append(f"| {TITLES[n]} | " + " | ".join(str(total.get(k, 0)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".ood")
    parser.add_argument("--per-set", type=int, default=300)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs (smoke runs)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    from medlens.api import load_model
    from medlens.progress import quiet_libraries

    quiet_libraries(False)
    names = [n for n in args.models.split(",") if (args.data / MODELS[n][0]).exists()]
    if not names:
        print(f"skip: no real data under {args.data}")
        return 0
    runs = train_all(args.data, args.work, names, args.epochs)
    sets = other_sets(args.data, args.per_set)
    results: dict[str, Any] = {}
    for n in names:
        predictor = load_model(runs[n])
        print(f"{n}: own test split ...", flush=True)
        results[n] = {"own": own_test(predictor, n, args.data, runs[n]), "others": {}}
        for s, make_items in sets.items():
            if s == n:
                results[n]["others"][s] = {"n": 0, "refused": float("nan"), "verdicts": {}, "guarded": 0}
                continue
            try:
                items = list(make_items())
            except Exception as e:  # noqa: BLE001 - a set that is absent here is reported, not fatal
                print(f"  {s}: not available ({type(e).__name__}: {e})")
                items = []
            verdicts: Counter = Counter()
            guarded = by_distance = 0
            for _, make in items:
                verdict, result = classify(predictor, make)
                verdicts[verdict] += 1
                if result is not None:  # reached the guard: would its distances alone refuse it?
                    guarded += 1
                    checks = {r["check"] for r in result.prediction.out_of_scope}
                    by_distance += bool(checks & {"intensity", "features"})
            total = sum(verdicts.values())
            refused = (total - verdicts.get("accepted", 0)) / total if total else float("nan")
            results[n]["others"][s] = {
                "n": total,
                "refused": refused,
                "verdicts": dict(verdicts),
                "guarded": guarded,
                "refused_by_distances": by_distance / guarded if guarded else float("nan"),
            }
            print(f"  {s}: {total} inputs, refused {refused:.1%} {dict(verdicts)}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2, default=float))
    body = markdown(results, names, args.per_set)
    print(body)
    if not args.no_record:
        record_section(
            "ood", "Out-of-distribution guard: own test images accepted, other sets refused (bench_ood.py)", body
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
