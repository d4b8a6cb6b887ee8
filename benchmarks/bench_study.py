"""The study on real data: classical and deep families on PneumoniaMNIST, RetinaMNIST,
AdrenalMNIST3D and Brain Tumor MRI, next to MedMNIST v2's published numbers.

Per dataset (``--datasets``, each recorded in its own section ``study-<dataset>``):

* classical models (``svm``, ``random-forest``, ``elm`` by default, ``--classical``; HOG + LBP + histogram
  features, grid search on validation)
  trained once (first seed; they are deterministic given the split);
* deep recipes trained once per seed (``--seeds``, default 0,1,2) with
  :func:`medlens.training.run.train` and medlens's defaults (AdamW, cosine, light augmentation,
  class-weighted loss, best epoch by validation AUC) plus the recipe's epochs / input size;
* test AUC and ACC with 95% bootstrap CIs (:func:`medlens.evaluation.statistics.bootstrap_metrics`,
  stratified percentile, 1000 resamples), per seed, as mean ± sd over seeds, and for the
  ensemble of the seeds (mean of their test probabilities). Binary tasks also get the accuracy at
  the threshold chosen on validation (``acc@threshold``): the two ways to steady ACC that need no
  change to training. (Temperature scaling cannot change a binary ACC at 0.5: softmax's argmax
  does not depend on the temperature.)
* training time per model (``metrics.json`` ``timing.total_seconds``: fit incl. validation).
* Brain Tumor MRI: accuracy on the full test set and with the test images that duplicate a
  training image removed — exact and near duplicates from
  :func:`medlens.data.audit.audit_dataset` (cross-split groups).

MedMNIST splits are the official ones; Brain Tumor MRI keeps Training/Testing and carves
validation (15%) out of Training, stratified, with the run's seed.

Before training, the script measures each deep recipe's training speed on this machine and prints
the estimated time per dataset.

    python benchmarks/bench_study.py                                   # all datasets, seeds 0,1,2 (records)
    python benchmarks/bench_study.py --datasets pneumoniamnist --seeds 0,1,2,3,4
    python benchmarks/bench_study.py --datasets brain_tumor_mri --deep cnn-small@128:15
    python benchmarks/bench_study.py --estimate-only                   # print the time estimate and stop
    python benchmarks/bench_study.py --quick                           # 200 samples, 1 epoch, no record
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import (  # noqa: E402
    LOAD_CAVEAT,
    add_common_args,
    classical_estimate,
    f3,
    fmt_minutes,
    load_note,
    mean_sd,
    probe_ips,
    read_predictions,
    record,
    train_model,
)

# name: source (relative to the data folder), dims, channels, classes, n train / val / test, task
DATASETS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "source": "medmnist/pneumoniamnist.npz",
        "dims": 2,
        "channels": 1,
        "classes": 2,
        "n": (4708, 524, 624),
        "title": "PneumoniaMNIST (28 px, binary)",
    },
    "retinamnist": {
        "source": "medmnist/retinamnist.npz",
        "dims": 2,
        "channels": 3,
        "classes": 5,
        "n": (1080, 120, 400),
        "title": "RetinaMNIST (28 px RGB, 5-grade ordinal)",
    },
    "adrenalmnist3d": {
        "source": "medmnist/adrenalmnist3d.npz",
        "dims": 3,
        "channels": 1,
        "classes": 2,
        "n": (1188, 98, 298),
        "title": "AdrenalMNIST3D (28³, binary)",
    },
    "brain_tumor_mri": {
        "source": "brain_tumor_mri",
        "dims": 2,
        "channels": 1,
        "classes": 4,
        "n": (4857, 857, 1311),
        "title": "Brain Tumor MRI (4 classes, from scratch)",
    },
}

# deep recipes per dataset: "model[@img_size]:epochs" (training under ~10 min per model on 2 idle cores)
DEEP: dict[str, list[str]] = {
    "pneumoniamnist": ["cnn-small:30", "cnn-small:30+ema=0.99", "resnet18:6x1", "vit:10x1", "efficientnet-b0:10x1"],
    "retinamnist": ["cnn-small:40", "cnn-small:40+ema=0.99", "resnet18:15x1"],
    "adrenalmnist3d": ["cnn-2.5d:40+ema=0.99", "resnet18-3d:6x1", "cnn-lstm:15x1"],
    "brain_tumor_mri": ["cnn-small@128:15+ema=0.99"],
}
CLASSICAL = ["svm", "random-forest", "elm"]
CLASSICAL_FOR = {"brain_tumor_mri": ["svm", "elm"]}  # features of 7000 larger images cost minutes per model

TARGETS = {  # (metric, minimum): issue 15 for PneumoniaMNIST and RetinaMNIST, the study's first issue for the others
    "pneumoniamnist": [("auc", 0.975), ("acc", 0.90)],
    "retinamnist": [("auc", 0.76), ("acc", 0.55)],
    "adrenalmnist3d": [("auc", 0.86)],
    "brain_tumor_mri": [("acc", 0.95)],
}

PUBLISHED = {  # MedMNIST v2 (Yang et al., Scientific Data 2023), test AUC / ACC
    "pneumoniamnist": [
        ("ResNet-18 (28)", 0.944, 0.854),
        ("ResNet-18 (224)", 0.956, 0.864),
        ("ResNet-50 (28)", 0.948, 0.854),
        ("ResNet-50 (224)", 0.962, 0.884),
        ("auto-sklearn", 0.942, 0.855),
        ("AutoKeras", 0.947, 0.878),
        ("Google AutoML Vision", 0.991, 0.946),
    ],
    "retinamnist": [
        ("ResNet-18 (28)", 0.717, 0.524),
        ("ResNet-18 (224)", 0.710, 0.493),
        ("ResNet-50 (28)", 0.726, 0.528),
        ("ResNet-50 (224)", 0.716, 0.511),
        ("auto-sklearn", 0.690, 0.515),
        ("AutoKeras", 0.719, 0.503),
        ("Google AutoML Vision", 0.750, 0.531),
    ],
    "adrenalmnist3d": [("best published ResNet (3D / ACS / 2.5D)", 0.84, None)],
    "brain_tumor_mri": [],
}


def quick_cap(ds: str) -> int:
    """Samples per split in --quick runs (3D volumes cost far more per sample)."""
    return 64 if DATASETS[ds]["dims"] == 3 else 200


@dataclass(frozen=True)
class Recipe:
    """One deep recipe: ``model[@size]:epochs[xSEEDS][+key=value...]``.

    ``xSEEDS`` trains only the first SEEDS of ``--seeds`` (costly models); ``+key=value`` sets a
    :class:`~medlens.training.config.TrainConfig` field (``+ema=0.99``, ``+augment=standard``).
    """

    model: str
    size: int | None
    epochs: int
    n_seeds: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return recipe_label(self.model, self.size) + "".join(f"+{k}={v}" for k, v in self.options)

    def seeds(self, seeds: list[int]) -> list[int]:
        return seeds[: self.n_seeds] if self.n_seeds else list(seeds)

    def describe(self) -> str:
        runs = f", {self.n_seeds} seed{'s' if self.n_seeds > 1 else ''}" if self.n_seeds else ""
        return f"`{self.label}` {self.epochs} epochs{runs}"


def parse_recipe(text: str) -> Recipe:
    """``model[@size]:epochs[xSEEDS][+key=value...]`` -> :class:`Recipe`."""
    head, *opts = text.strip().split("+")
    name, _, rest = head.partition(":")
    model, _, size = name.partition("@")
    epochs, _, n_seeds = (rest or "10").partition("x")
    options = []
    for opt in opts:
        key, _, value = opt.partition("=")
        options.append((key.strip(), _number(value.strip())))
    return Recipe(
        model.strip(), int(size) if size else None, int(epochs), int(n_seeds) if n_seeds else None, tuple(options)
    )


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def recipe_label(model: str, size: int | None) -> str:
    return f"{model}@{size}" if size else model


def args_classical(classical: list[str] | None, ds: str) -> list[str]:
    """``--classical`` when given, else the dataset's default list."""
    return CLASSICAL_FOR.get(ds, CLASSICAL) if classical is None else classical


def estimate(
    ds: str, recipes, seeds: list[int], n_cap: int | None, quick: bool, classical: list[str] | None = None
) -> tuple[float, dict[str, float]]:
    """Seconds for dataset ``ds`` (deep from a measured training speed, classical from the table)."""
    from medlens.models.registry import get_model

    info = DATASETS[ds]
    n_train, n_val, _ = info["n"]
    if n_cap:
        n_train, n_val = min(n_train, n_cap), min(n_val, n_cap)
    per_model: dict[str, float] = {}
    for model in args_classical(classical, ds):
        per_model[model] = (
            classical_estimate(model, n_train, info["dims"]) * (2.0 if ds == "brain_tumor_mri" else 1.0) + 10
        )
    for r in recipes:
        native = 128 if ds == "brain_tumor_mri" else 28
        img = r.size or min(native, 128 if info["dims"] == 2 else 64)
        bs = int(get_model(r.model).defaults.get("batch_size", 64))
        ips = probe_ips(
            r.model,
            dims=info["dims"],
            img_size=img,
            batch_size=4 if quick else bs,
            channels=info["channels"],
            outputs=info["classes"],
            seconds=0.3 if quick else 1.5,
        )
        epochs = 1 if quick else r.epochs
        per_call = 45 if ds == "brain_tumor_mri" else 15  # start-up; train() reads every image of the splits again
        per_model[r.label] = len(r.seeds(seeds)) * (epochs * (n_train + 0.35 * n_val) / ips + per_call)
    load = 60.0 if ds == "brain_tumor_mri" else 5.0  # audit of 7000 JPEGs
    return sum(per_model.values()) + load, per_model


def run_dataset(ds: str, recipes, seeds: list[int], args) -> dict[str, Any]:
    info = DATASETS[ds]
    src = args.data / info["source"]
    out = study_dir(ds, args)
    n_cap = quick_cap(ds) if args.quick else None
    results: dict[str, dict[str, Any]] = {}  # label -> {"kind", "seeds": {seed: {...}}}
    for model in args_classical(args.classical, ds):
        _one_in(out / f"seed{seeds[0]}", model, model, seeds[0], {}, results, src, n_cap, args, ds)
    for r in recipes:
        settings: dict[str, Any] = {
            "epochs": 1 if args.quick else r.epochs,
            "patience": 1 if args.quick else r.epochs,
            **dict(r.options),
        }
        if r.size:
            settings["img_size"] = r.size
        for seed in r.seeds(seeds):
            # a run directory holds one model per name: a recipe with a size or options gets its own
            run_out = out / (f"seed{seed}-{r.label}" if r.label != r.model else f"seed{seed}")
            _one_in(run_out, r.label, r.model, seed, settings, results, src, n_cap, args, ds)
    dedup = _duplicates(src, args) if ds == "brain_tumor_mri" else None
    return {"task": _task_any(results), "results": results, "dedup": dedup}


def _one_in(
    run_out: Path, label: str, model: str, seed: int, settings: dict, results: dict, src: Path, n_cap, args, ds: str
) -> None:
    """Train one model into ``run_out`` and add its test/val predictions to ``results[label]``."""

    settings = dict(settings, seed=seed, max_samples=n_cap, threads=args.threads)
    done = run_out / "models" / model
    if args.reuse and (done / "metrics.json").is_file() and (done / "predictions_test.csv").is_file():
        from medlens.runs import RunDir, read_json

        model_dir = RunDir(run_out).model(model)
        _add_entry(results, label, seed, model_dir, read_json(model_dir.metrics))
        print(f"  {ds:15s} {label:16s} seed {seed}  reused {run_out}", flush=True)
        return
    shared = run_out.parent / "fingerprint.json"  # same source: reuse it (train() computes it per run directory)
    if shared.is_file() and not (run_out / "fingerprint.json").is_file():
        run_out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, run_out / "fingerprint.json")
    try:
        r = train_model(src, model, run_out, **settings)
        if not shared.is_file() and r["run"].fingerprint.is_file():
            shutil.copyfile(r["run"].fingerprint, shared)
    except Exception as e:  # noqa: BLE001 - a failing model is a result
        results.setdefault(label, {"kind": "?", "seeds": {}})["seeds"][seed] = {
            "error": f"{type(e).__name__}: {e}"[:200]
        }
        print(f"  {ds} {label} seed {seed} FAILED: {e}")
        return
    _add_entry(results, label, seed, r["model_dir"], r["metrics"])
    t = r["metrics"].get("test", {})
    print(
        f"  {ds:15s} {label:16s} seed {seed}  AUC {f3(t.get('auc'))}  ACC {f3(t.get('acc'))}  "
        f"fit {r['metrics']['timing'].get('total_seconds', 0):.0f} s",
        flush=True,
    )


def _add_entry(results: dict, label: str, seed: int, model_dir, metrics: dict) -> None:
    """Add one trained model's test/val predictions and timing to ``results[label]["seeds"][seed]``."""
    from medlens.runs import read_json

    model_info = read_json(model_dir.info)
    ids, y, probs = read_predictions(model_dir, "test")
    results.setdefault(label, {"kind": model_info["kind"], "seeds": {}})["seeds"][seed] = {
        "ids": ids,
        "y": y,
        "probs": probs,
        "fit_s": metrics["timing"].get("total_seconds"),
        "acc_thr": metrics.get("test", {}).get("acc@threshold"),
        "threshold": (model_info.get("thresholds") or {}).get("decision"),
        "val": read_predictions(model_dir, "val"),
        "task": model_info["task"],
    }


def study_dir(ds: str, args) -> Path:
    """Where ``run_dataset`` writes the run directories of dataset ``ds``."""
    return (
        (args.out or ROOT / "runs" / "bench")
        / ("study-quick" if args.quick else "study")
        / (f"{ds}-{args.tag}" if args.tag else ds)
    )


def collect_runs(ds: str, args) -> dict[str, Any] | None:
    """``run_dataset``'s results rebuilt from the run directories on disk (no training).

    ``seed{N}`` holds the classical models and the deep recipes without size or options (label
    = model name); ``seed{N}-{label}`` one recipe each. Without ``--tag`` the runs of every tag
    (``<dataset>-<tag>``) are read too. ``None`` when nothing was trained.
    """
    from medlens.runs import RunDir, read_json

    results: dict[str, dict[str, Any]] = {}
    main = study_dir(ds, args)
    folders = [main] if args.tag else [main, *sorted(main.parent.glob(f"{ds}-*"))]  # with the tagged runs
    for run_dir in sorted(d for folder in folders for d in folder.glob("seed*")):
        head, _, label_part = run_dir.name.partition("-")
        if not head[4:].isdigit() or not (run_dir / "models").is_dir():
            continue
        for model_root in sorted((run_dir / "models").iterdir()):
            md = RunDir(run_dir).model(model_root.name)
            if md.metrics.is_file() and md.predictions("test").is_file():
                _add_entry(results, label_part or model_root.name, int(head[4:]), md, read_json(md.metrics))
    if not results:
        return None
    return {"task": _task_any(results), "results": results, "dedup": None}


def _task_any(results) -> str | None:
    for r in results.values():
        for s in r["seeds"].values():
            if "task" in s:
                return s["task"]
    return None


def _duplicates(src: Path, args) -> dict[str, Any]:
    """Test ids with an exact or near copy in the training split (cross-split audit groups)."""
    import warnings

    from medlens.data.audit import audit_dataset
    from medlens.data.sources import open_source

    t0 = time.perf_counter()
    dataset = open_source(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = audit_dataset(dataset, show_progress=False)
    dup_ids: dict[str, set[str]] = {"exact": set(), "near": set()}
    for kind in ("exact", "near"):
        for g in report[f"{kind}_duplicates"]["groups"]:
            splits = {m["split"] for m in g["members"]}
            if "test" in splits and "train" in splits:
                dup_ids[kind].update(m["id"] for m in g["members"] if m["split"] == "test")
    within_test = sum(
        1
        for kind in ("exact", "near")
        for g in report[f"{kind}_duplicates"]["groups"]
        if {m["split"] for m in g["members"]} == {"test"}
    )
    print(
        f"  audit: {len(dup_ids['exact'])} test images with an exact copy in Training, "
        f"{len(dup_ids['near'] - dup_ids['exact'])} more with a near copy ({time.perf_counter() - t0:.0f} s)"
    )
    return {
        "exact": dup_ids["exact"],
        "near": dup_ids["near"],
        "any": dup_ids["exact"] | dup_ids["near"],
        "within_test_groups": within_test,
        "n_samples": report["n_samples"],
        "near_threshold": report["near_duplicates"]["threshold"],
        "seconds": time.perf_counter() - t0,
    }


# -- statistics -----------------------------------------------------------------------------
def ci_metrics(y, probs, task: str, n_resamples: int, keep: np.ndarray | None = None) -> dict[str, Any]:
    from medlens.evaluation.statistics import bootstrap_metrics

    if keep is not None:
        y, probs = y[keep], probs[keep]
    try:
        b = bootstrap_metrics(y, probs, task, n_resamples=n_resamples, seed=0)
    except Exception as e:  # noqa: BLE001 - e.g. a class absent from a tiny quick subset
        return {"error": str(e)[:80]}
    return {k: b[k] for k in ("auc", "acc") if k in b}


def fmt_ci(m: dict[str, Any] | None, key: str) -> str:
    if not m or key not in m:
        return "-"
    v = m[key]
    if v["value"] is None or np.isnan(v["value"]):
        return "-"
    return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def summarize(ds: str, res: dict[str, Any], args) -> tuple[str, list[str]]:
    task, results, dedup = res["task"], res["results"], res["dedup"]
    n_res = 200 if args.quick else 1000
    binary = task == "binary"
    dedup_cols = dedup is not None
    head = (
        "| model | seed | test AUC [95% CI] | test ACC [95% CI] |"
        + (" ACC@thr (val) |" if binary else "")
        + (" ACC, exact duplicates removed [95% CI] | ACC, exact + near removed [95% CI] |" if dedup_cols else "")
        + " val AUC | fit s |"
    )
    sep = "|---|---|---:|---:|" + ("---:|" if binary else "") + ("---:|---:|" if dedup_cols else "") + "---:|---:|"
    lines = [head, sep]
    achieved: dict[str, list[float]] = {"auc": [], "acc": []}
    best_deep: dict[str, float] = {}
    for label, r in results.items():
        seeds = r["seeds"]
        good = {s: e for s, e in seeds.items() if "error" not in e}
        for s, e in seeds.items():
            if "error" in e:
                lines.append(
                    f"| {label} | {s} | failed: {e['error'][:90]} | |"
                    + (" |" if binary else "")
                    + (" | |" if dedup_cols else "")
                    + " | |"
                )
                continue
            m = ci_metrics(e["y"], e["probs"], task, n_res)
            e["m"] = m
            row = f"| {label} | {s} | {fmt_ci(m, 'auc')} | {fmt_ci(m, 'acc')} |"
            if binary:
                row += f" {f3(e['acc_thr'])} |"
            if dedup_cols:
                e["m_exact"] = ci_metrics(
                    e["y"], e["probs"], task, n_res, np.array([i not in dedup["exact"] for i in e["ids"]])
                )
                e["m_dedup"] = ci_metrics(
                    e["y"], e["probs"], task, n_res, np.array([i not in dedup["any"] for i in e["ids"]])
                )
                row += f" {fmt_ci(e['m_exact'], 'acc')} | {fmt_ci(e['m_dedup'], 'acc')} |"
            lines.append(row + f" {f3(_val_auc(e['val'], task))} | {e['fit_s']:.0f} |")
        if len(good) > 1:
            aucs = [e["m"]["auc"]["value"] for e in good.values() if "auc" in e.get("m", {})]
            accs = [e["m"]["acc"]["value"] for e in good.values() if "acc" in e.get("m", {})]
            thr = [e["acc_thr"] for e in good.values()]
            row = f"| {label} | mean ± sd ({len(good)}) | {mean_sd(aucs)} | {mean_sd(accs)} |"
            if binary:
                row += f" {mean_sd(thr)} |"
            if dedup_cols:
                for key in ("m_exact", "m_dedup"):
                    row += f" {mean_sd([e[key]['acc']['value'] for e in good.values() if 'acc' in e.get(key, {})])} |"
            val_aucs = [_val_auc(e["val"], task) for e in good.values()]
            lines.append(row + f" {mean_sd(val_aucs)} | {statistics.mean(e['fit_s'] for e in good.values()):.0f} |")
            ids, y, p = _aligned_mean(good, "test")
            if len(ids) >= 10:
                m = ci_metrics(y, p, task, n_res)
                subset = "" if all(len(e["ids"]) == len(ids) for e in good.values()) else f", {len(ids)} common ids"
                row = f"| {label} | ensemble of {len(good)}{subset} | {fmt_ci(m, 'auc')} | {fmt_ci(m, 'acc')} |"
                if binary:
                    row += f" {f3(_ensemble_acc_thr(good))} |"
                if dedup_cols:
                    for dup in (dedup["exact"], dedup["any"]):
                        keep = np.array([i not in dup for i in ids])
                        row += f" {fmt_ci(ci_metrics(y, p, task, n_res, keep), 'acc')} |"
                ens_val = _val_auc(_aligned_mean(good, "val"), task)
                lines.append(row + f" {f3(ens_val)} | {sum(e['fit_s'] for e in good.values()):.0f} |")
                if r["kind"] == "deep" and "auc" in m:
                    best_deep[f"{label} ensemble"] = m["auc"]["value"]
                    achieved["auc"].append(m["auc"]["value"])
                    achieved["acc"].append(m["acc"]["value"])
        for e in good.values():
            if r["kind"] == "deep" and "auc" in e.get("m", {}):
                achieved["auc"].append(e["m"]["auc"]["value"])
                achieved["acc"].append(e["m"]["acc"]["value"])
    notes = []
    for metric, minimum in TARGETS.get(ds, []):
        vals = achieved[metric]
        if vals:
            best = max(vals)
            notes.append(
                f"target deep {metric.upper()} >= {minimum}: best deep row (one seed or a recipe's ensemble of "
                f"seeds) {best:.3f} -> {'met' if best >= minimum else 'NOT met'}"
            )
    return "\n".join(lines), notes


SUMMARY_PUBLISHED = ("ResNet-18 (28)", "ResNet-50 (28)", "auto-sklearn", "Google AutoML Vision")


def summary_row(ds: str, res: dict[str, Any], args) -> str:
    """One row of the cross-dataset table: best classical, best deep recipe (mean over seeds and
    the seeds' ensemble) and MedMNIST v2's published numbers."""
    _, notes = summarize(ds, res, args)  # fills e["m"] (test AUC/ACC with CIs) of every seed entry
    results, task = res["results"], res["task"]

    def value(m, key):
        return m[key]["value"] if m and key in m and m[key]["value"] is not None else float("nan")

    classical = [
        (label, e) for label, r in results.items() if r["kind"] == "classical" for e in r["seeds"].values() if "m" in e
    ]
    cell_classical = "-"
    if classical:
        label, e = max(classical, key=lambda t: value(t[1]["m"], "auc"))
        cell_classical = f"{label}: {fmt_ci(e['m'], 'auc')} / {fmt_ci(e['m'], 'acc')}"
    deep = {label: [e for e in r["seeds"].values() if "m" in e] for label, r in results.items() if r["kind"] == "deep"}
    deep = {k: v for k, v in deep.items() if v}
    cell_deep = cell_ens = "-"
    if deep:
        label = max(deep, key=lambda k: statistics.mean(value(e["m"], "auc") for e in deep[k]))
        entries = deep[label]
        cell_deep = (
            f"{label} ({len(entries)} seed{'s' if len(entries) > 1 else ''}): "
            f"{mean_sd([value(e['m'], 'auc') for e in entries])} / {mean_sd([value(e['m'], 'acc') for e in entries])}"
        )
        good = {s: e for s, e in results[label]["seeds"].items() if "m" in e}
        if len(good) > 1:
            ids, y, p = _aligned_mean(good, "test")
            m = ci_metrics(y, p, task, 200 if args.quick else 1000)
            cell_ens = f"{fmt_ci(m, 'auc')} / {fmt_ci(m, 'acc')}"
    published = {name: (auc, acc) for name, auc, acc in PUBLISHED.get(ds, [])}
    pub_cells = []
    for name in SUMMARY_PUBLISHED:
        auc, acc = published.get(name, (None, None))
        pub_cells.append("-" if auc is None else f"{auc:.3f}" + (f" / {acc:.3f}" if acc is not None else ""))
    if ds == "adrenalmnist3d":
        pub_cells[0] = "best published ResNet about .84"
    title = DATASETS[ds]["title"].split(" (")[0]
    return (
        f"| {title} | {cell_classical} | {cell_deep} | {cell_ens} | "
        + " | ".join(pub_cells)
        + f" | {'; '.join(notes) or '-'} |"
    )


def summary_markdown(rows: list[str]) -> str:
    head = (
        "| dataset | best classical: test AUC / ACC [95% CI] | best deep recipe (by mean AUC): mean ± sd over seeds, "
        "AUC / ACC | that recipe's ensemble of seeds: AUC / ACC [95% CI] | MedMNIST v2 ResNet-18 (28) | ResNet-50 (28) "
        "| auto-sklearn | Google AutoML Vision | targets of the issue |"
    )
    return "\n".join(
        [
            "The study's answer per dataset, from the run directories that `bench_study.py` trained (sections "
            "`study-<dataset>` below hold every model, seed and CI). ACC: MedMNIST's rule (0.5 on the positive score "
            "for binary, argmax otherwise). Published numbers: MedMNIST v2 (Yang et al., Scientific Data 2023), test "
            "AUC / ACC at 28 px.",
            "",
            head,
            "|---|---|---|---|---:|---:|---:|---:|---|",
            *rows,
        ]
    )


def _aligned_mean(good: dict, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids common to every seed's ``split`` predictions, their labels and the mean probabilities."""

    def parts(e):
        return (e["ids"], e["y"], e["probs"]) if split == "test" else e["val"]

    tables = [parts(e) for e in good.values()]
    common = set(tables[0][0]).intersection(*[set(t[0]) for t in tables[1:]])
    ids = [i for i in tables[0][0] if i in common]
    if not ids:
        return [], np.zeros(0), np.zeros((0, 0))
    rows = []
    for t_ids, _, t_p in tables:
        pos = {i: k for k, i in enumerate(t_ids)}
        rows.append(t_p[[pos[i] for i in ids]])
    pos0 = {i: k for k, i in enumerate(tables[0][0])}
    y = tables[0][1][[pos0[i] for i in ids]]
    return ids, y, np.mean(rows, axis=0)


def _val_auc(val: tuple, task: str) -> float | None:
    """Validation AUC of (ids, labels, probabilities): what a recipe is chosen by."""
    from medlens.evaluation.metrics import classification_metrics

    _, y, p = val
    return classification_metrics(y, p, task, None).get("auc") if len(y) else None


def ensembles_table(res: dict[str, Any], args) -> list[str]:
    """The ensembles of the evaluation (:mod:`medlens.study.ensembles`: mean of the deep members,
    mean of all, logistic-regression stacking fitted on validation) over the members: each deep
    recipe's ensemble of seeds (or its one seed) and each classical model. Test AUC / ACC (0.5
    rule) with CIs as in the table above; the DeLong test against each member, Holm-adjusted."""
    from medlens.study import comparison as C
    from medlens.study.ensembles import ensembles_section

    task, n_res = res["task"], 200 if args.quick else 1000
    preds, kinds = {}, {}
    for label, r in res["results"].items():
        good = {s: e for s, e in r["seeds"].items() if "probs" in e}
        if not good or r["kind"] not in ("deep", "classical"):
            continue
        if len(good) == 1:
            e = next(iter(good.values()))
            preds[label] = (e["val"], (e["ids"], e["y"], e["probs"]))
        else:
            preds[label] = (_aligned_mean(good, "val"), _aligned_mean(good, "test"))
        kinds[label] = r["kind"]
    names = sorted(preds, key=lambda n: (kinds[n] != "classical", n))
    if len(names) < 2:
        return []
    k = preds[names[0]][1][2].shape[1]
    class_names = [str(i) for i in range(k)]
    models = {}
    for n in names:
        (_, y_val, p_val), (_, y, p) = preds[n]
        models[n] = C.model_statistics(
            task=task, class_names=class_names, y_val=y_val, p_val=p_val, y_eval=y, p_eval=p, n_resamples=n_res
        )
    ens, aligned = ensembles_section(
        names,
        kinds,
        preds,
        models,
        task=task,
        class_names=class_names,
        split="test",
        n_resamples=n_res,
        seed=0,
        target_risk=C.DEFAULT_TARGET_RISK,
    )
    if not ens:
        return []
    tests = ens["pairwise"]["tests"]
    lines = [
        "",
        "Ensembles over the rows above (`medlens.study.ensembles`, as `medlens evaluate` builds them): members are "
        "each deep recipe's ensemble of seeds (or its one seed) and each classical model; *mean-deep* / "
        "*mean-all*: mean probability; *stack-all*: logistic regression on the members' log-odds fitted on the "
        "validation predictions only (test labels never seen). AUC and ACC (0.5 rule) with 95% CIs; AUC "
        "difference to each member with the DeLong p, Holm-adjusted over these tests.",
        "",
        "| ensemble | members | test AUC [95% CI] | test ACC [95% CI] | AUC − member (Holm p) |",
        "|---|---|---:|---:|---|",
    ]
    for name in ens["order"]:
        _, y, p = aligned[name][1]
        m = ci_metrics(y, p, task, n_res)
        versus = []
        for member in ens["models"][name]["members"]:
            t = next((t for t in tests if (t["a"], t["b"], t["metric"]) == (name, member, "auc")), {})
            versus.append(
                f"{member} {t['diff']:+.3f} ({t['p_holm']:.2g})" if t.get("p_holm") is not None else f"{member} n/a"
            )
        members = ", ".join(ens["models"][name]["members"])
        lines.append(f"| {name} | {members} | {fmt_ci(m, 'auc')} | {fmt_ci(m, 'acc')} | {'; '.join(versus)} |")
    for sk in ens["skipped"]:
        lines.append(f"\n{sk['name']} not built: {sk['reason']}.")
    return lines


def _ensemble_acc_thr(good: dict) -> float | None:
    """Ensemble accuracy at a threshold chosen on the ensemble's validation probabilities."""
    from medlens.evaluation.metrics import accuracy_at_threshold
    from medlens.evaluation.thresholds import choose_threshold

    _, yv, pv = _aligned_mean(good, "val")
    _, y, p = _aligned_mean(good, "test")
    if len(yv) < 10 or len(y) < 10:
        return None
    try:
        t = float(choose_threshold(yv, pv))
        return float(accuracy_at_threshold(y, p, t))
    except Exception:  # noqa: BLE001
        return None


def markdown(ds: str, res: dict[str, Any], recipes, seeds: list[int], args, elapsed: float, est: float) -> str:
    table, notes = summarize(ds, res, args)
    info = DATASETS[ds]
    rec = ", ".join(r.describe() for r in recipes)
    classical = args_classical(args.classical, ds)
    classical_text = (
        f"Classical ({', '.join(f'`{m}`' for m in classical)}; seed {seeds[0]})" if classical else "No classical models"
    )
    lines = [
        f"{info['title']}. {classical_text} and deep ({rec}; seeds "
        f"{', '.join(map(str, seeds))}) trained by `medlens.training.run.train` with its defaults (AdamW, cosine, light "
        "augmentation, class-weighted loss, best epoch by validation AUC) unless a recipe's `+key=value` sets "
        "otherwise (`ema`: `--ema`, `imbalance=none`: plain cross-entropy). Test AUC / ACC (MedMNIST's rule: "
        "0.5 on the positive score, argmax otherwise) with 95% stratified bootstrap CIs; *ensemble*: mean of "
        "the seeds' test probabilities; *ACC@thr*: threshold chosen on validation. *fit s*: training incl. "
        "validation (ensemble: sum).",
        "",
        table,
        *ensembles_table(res, args),
    ]
    if res["dedup"] is not None:
        d = res["dedup"]
        lines += [
            "",
            f"Duplicates (`medlens.data.audit.audit_dataset`, {d['n_samples']} images, near = pHash within "
            f"{d['near_threshold']} bits): {len(d['exact'])} Testing images have an exact copy in Training and "
            f"{len(d['any'] - d['exact'])} more a near copy (pHash pairs at 3-4 bits can be similar-looking "
            f"different slices rather than copies); the *removed* columns leave the {len(d['exact'])} "
            f"exact / all {len(d['any'])} out of the test set.",
        ]
    if PUBLISHED.get(ds):
        lines += [
            "",
            "MedMNIST v2 published (test AUC / ACC): "
            + "; ".join(
                f"{name} {auc:.3f}" + (f"/{acc:.3f}" if acc is not None else "") for name, auc, acc in PUBLISHED[ds]
            )
            + ".",
        ]
    if notes:
        lines += ["", "Targets of the issue: " + "; ".join(notes) + "."]
    if info["classes"] == 2:
        lines += [
            "",
            "Temperature scaling is not listed as an ACC stabilizer: for a 2-class softmax, p > 0.5 iff "
            "logit1 > logit0 at every temperature, so ACC at 0.5 cannot change.",
        ]
    timing = (
        "Models read from their run folders (`--reuse`): trained by an earlier, interrupted invocation; each *fit s* "
        "is that training's. "
        if args.reuse
        else f"Wall time {fmt_minutes(elapsed)} (estimated up front {fmt_minutes(est)}). "
    )
    lines += ["", timing + LOAD_CAVEAT + " " + load_note() + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {', '.join(DATASETS)}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="seeds for the deep models (classical: the first)")
    parser.add_argument(
        "--deep",
        default=None,
        help="override the deep recipes of every chosen dataset: 'model[@size]:epochs[xSEEDS][+key=value...],...'",
    )
    parser.add_argument(
        "--classical",
        default=None,
        type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
        help=f"classical models, comma-separated (default {','.join(CLASSICAL)}, Brain Tumor MRI svm,elm; '' for none)",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="record as a separate section study-<dataset>-<tag> (extra recipes beside the main table)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="train nothing: rebuild the cross-dataset table (section study-summary) from the run directories",
    )
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="a model already trained in its run folder (metrics and test predictions) is read, not trained again",
    )
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        print(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.quick:
        seeds = seeds[:2]
    datasets = [
        d
        for d in datasets
        if (args.data / DATASETS[d]["source"]).exists()
        or print(f"skip {d}: {args.data / DATASETS[d]['source']} absent")
    ]
    if args.summary:
        rows = [summary_row(ds, res, args) for ds in datasets if (res := collect_runs(ds, args)) is not None]
        if not rows:
            print(f"no trained runs under {study_dir(datasets[0], args).parent}")
            return 2
        md = summary_markdown(rows)
        print(md)
        record(args, "study-summary", "Study: deep vs classical on real data, next to the published record", md)
        return 0
    plans, estimates = {}, {}
    print("measuring training speed per deep recipe for the time estimate ...")
    for ds in datasets:
        recipes = [parse_recipe(r) for r in (args.deep.split(",") if args.deep else DEEP[ds])]
        plans[ds] = recipes
        if args.reuse:  # nothing new is meant to train: no speed measurement
            estimates[ds] = 0.0
            continue
        est, per_model = estimate(ds, recipes, seeds, quick_cap(ds) if args.quick else None, args.quick, args.classical)
        estimates[ds] = est
        print(
            f"  {ds:16s} about {fmt_minutes(est):>9s}  ("
            + ", ".join(f"{k} {fmt_minutes(v)}" for k, v in per_model.items())
            + ")",
            flush=True,
        )
    print(f"estimated total: {fmt_minutes(sum(estimates.values()))}", flush=True)
    if args.estimate_only:
        return 0
    for ds in datasets:
        t0 = time.perf_counter()
        print(f"{ds}: training")
        res = run_dataset(ds, plans[ds], seeds, args)
        elapsed = time.perf_counter() - t0
        md = markdown(ds, res, plans[ds], seeds, args, elapsed, estimates[ds])
        print(md)
        key, title = f"study-{ds}", f"Study: {DATASETS[ds]['title']}"
        if args.tag:
            key, title = f"{key}-{args.tag}", f"{title}: {args.tag}"
        record(args, key, title, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
