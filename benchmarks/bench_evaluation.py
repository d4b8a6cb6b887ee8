"""Evaluation a reviewer trusts, on real data: leaked vs patient-level splits, subgroups and
shortcuts on NIH chest X-rays, and CHASE_DB1 -> HRF external validation (issue #13).

Everything goes through medlens's own study functions: :func:`medlens.study.compare.compare`
(training and evaluation, ``medlens compare``), the ``comparison.json`` it writes, and
:func:`medlens.study.external.evaluate_external` (``medlens evaluate RUN --on SOURCE``). Parts
(``--only``):

``study``
    ``nih_cxr_1000/metadata.csv``: 1000 64x64 chest X-rays, binary normal / abnormal, columns
    sex, age, view_position, findings; its given splits (600 / 200 / 200) share 30 patients.
    Two split modes, each a run folder per seed under ``WORK/{given,patient}/seed{N}``:

    * ``given``: the source's splits (``--resplit`` not set; the leak stays in).
    * ``patient``: ``--resplit patient``, a patient-level split in the given split's proportions.
      It is made once (seed :data:`SPLIT_SEED`, :func:`medlens.data.leakage.plan_splits`) and
      written into every seed's run folder before training, so the seeds differ in the model's
      initialisation only, as in the given mode.

    Models: ``svm`` on the first seed only (HOG + LBP + histogram features, grid search on
    validation; deterministic given the split: SVC's ``random_state`` only acts with
    ``probability=True``, which medlens does not use, and the Platt calibration's 5 folds are
    not shuffled; the run checks it by training svm a second time with seed 1 on the given
    split and reporting the largest difference of the test probabilities) and ``cnn-small``
    with every seed of ``--seeds`` (default 0, 1, 2; ``--epochs``, default 20: the ``standard``
    suite's; the registry's other defaults). Both with ``--by sex,age,view_position``
    and fixed age bands ``age=55,70`` (<55, 55-<70, >=70: near the tertiles 55 and 68 of the
    source's 1000 ages, fixed from the metadata before any figure was seen), minimum group 30.

    Reported, per split mode and model, from each run's ``comparison.json``: test AUC with its
    95% stratified bootstrap CI (``models.M.metrics.test.auc``; cnn-small: each seed and the
    mean ± sd over seeds); the patients across splits (``splitting``); the leak's effect (given
    minus patient-level AUC per model and seed with both CIs, and the interval of the difference
    from independent resamples of the two test sets,
    :func:`medlens.evaluation.statistics.unpaired_bootstrap_difference`: the two test sets hold
    different images); subgroup tables by sex, age band and view position (``subgroups``: n,
    prevalence, AUC, sensitivity and specificity at the validation threshold with CIs; per
    metric the largest gap with its CI, the homogeneity test's p and Holm's p); the shortcut
    baselines (``shortcuts``: the metadata-only logistic regression's AUC with CI and its
    DeLong test against each image model; how well each model's score separates each
    attribute, as an AUC with CI) and the plain findings evaluate writes.
``external``
    The CHASE_DB1 vessel runs of ``bench_segmentation.py`` (``--chase-runs DIR``, default
    ``benchmarks/.segmentation/chase`` of this checkout; one folder ``seed{N}`` per seed) on
    HRF through ``evaluate --on`` with ``--scale``. Each run folder is copied to
    ``WORK/external/seed{N}`` first (the original is only read). Scale: the median over HRF's
    images of ``bench_segmentation.hrf_scale`` (CHASE_DB1's pixels per degree: 30° vs 45°
    cameras and the field-of-view widths; about 0.42), computed from the run's training ids as
    that script does. Reported per seed and model: F1, AUC, sensitivity, specificity of the
    vessel class, internal (CHASE_DB1 test) and external (HRF, all images) with CIs and the
    difference with its CI. Skipped, with a line saying why, when the runs are absent.

    .venv/bin/python benchmarks/bench_evaluation.py                     # both parts (records)
    .venv/bin/python benchmarks/bench_evaluation.py --only study --seeds 0,1,2
    .venv/bin/python benchmarks/bench_evaluation.py --only external --chase-runs DIR
    .venv/bin/python benchmarks/bench_evaluation.py --quick             # smoke run, never records

``--quick``: 80 images per split, 1 epoch, the first seed, 200 resamples, minimum group 10, one
torch thread; the external part on 2 HRF images with the quick CHASE_DB1 run. Runs are cached in
``benchmarks/.evaluation/`` (``quick/`` for ``--quick``; delete a run folder to redo it). Writes
``results.json`` there and, unless ``--no-record`` or ``--quick``, the sections
``evaluation-nih`` and ``evaluation-external`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._record import record_section  # noqa: E402

PARTS = ("study", "external")
NIH = "nih_cxr_1000/metadata.csv"
MODES = {"given": None, "patient": "patient"}  # split mode -> compare's resplit
SPLIT_SEED = 0  # the one patient-level split every seed trains on
CLASSICAL, DEEP = "svm", "cnn-small"
BY = ("sex", "age", "view_position")
BANDS = {"age": [55.0, 70.0]}
MIN_GROUP = 30
EPOCHS = 20
DEFAULT_CHASE_RUNS = ROOT / "benchmarks" / ".segmentation" / "chase"
QUICK_CHASE_RUNS = ROOT / "benchmarks" / ".segmentation" / "quick" / "chase"
QUICK = {"max_samples": 80, "epochs": 1, "resamples": 200, "min_group": 10, "hrf_images": 2}
SEGMENTATION_METRICS = ("f1", "auc", "sensitivity", "specificity")


# -- the NIH study ----------------------------------------------------------------------------
def run_dir(args, mode: str, seed: int) -> Path:
    return args.work / mode / f"seed{seed}"


def write_patient_split(source: str, run: Path) -> None:
    """The patient-level split of :data:`SPLIT_SEED` into ``run/splits.json`` (kept when there)."""
    from medlens.data.leakage import plan_splits, write_plan
    from medlens.data.sources import open_source

    if (run / "splits.json").is_file():
        return
    plan = plan_splits(open_source(source, seed=SPLIT_SEED), seed=SPLIT_SEED, resplit="patient", show_progress=False)
    run.mkdir(parents=True, exist_ok=True)
    write_plan(run, plan, seed=SPLIT_SEED, source=source)


def run_study(args) -> dict[str, Any]:
    """Train and evaluate every (mode, seed) run folder; return their comparison.json sections."""
    from medlens.runs import read_json
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    source = str(args.data / NIH)
    out: dict[str, Any] = {"modes": {}}
    for mode, resplit in MODES.items():
        runs = {}
        for seed in args.seeds:
            run = run_dir(args, mode, seed)
            models = [CLASSICAL, DEEP] if seed == args.seeds[0] else [DEEP]
            comparison = run / "comparison.json"
            if not (comparison.is_file() and set(models) <= set(read_json(comparison).get("order") or [])):
                if resplit:
                    write_patient_split(source, run)
                print(f"{mode} seed {seed}: compare {', '.join(models)}", flush=True)
                compare(
                    source,
                    [SuiteEntry(m, {"epochs": args.epochs} if m == DEEP else {}) for m in models],
                    run,
                    seed=seed,
                    max_samples=args.max_samples,
                    n_resamples=args.resamples,
                    threads=args.threads,
                    show_progress=False,
                    resplit=resplit,
                    by=BY,
                    bands=BANDS,
                    min_group=args.min_group,
                    log=lambda msg, m=mode, s=seed: print(f"  {m} seed {s}: {msg}", flush=True),
                )
            runs[seed] = compact(read_json(comparison), run)
        out["modes"][mode] = runs
    out["leak"] = leak_effect(args)
    out["svm_seed_check"] = svm_seed_check(source, args)
    return out


def compact(comparison: dict[str, Any], run: Path) -> dict[str, Any]:
    """The parts of a comparison.json this benchmark reports."""
    return {
        "run": str(run),
        "n": comparison.get("n"),
        "auc": {m: e["metrics"]["test"]["auc"] for m, e in comparison["models"].items()},
        "splitting": comparison.get("splitting"),
        "subgroups": comparison.get("subgroups"),
        "shortcuts": comparison.get("shortcuts"),
    }


def leak_effect(args) -> list[dict[str, Any]]:
    """Per model and seed: given minus patient-level test AUC with the interval of the difference
    (independent resamples of the two test sets)."""
    from benchmarks.bench_train import read_predictions
    from medlens.evaluation.statistics import unpaired_bootstrap_difference
    from medlens.runs import RunDir

    rows = []
    for seed in args.seeds:
        for model in [CLASSICAL, DEEP] if seed == args.seeds[0] else [DEEP]:
            given = read_predictions(RunDir(run_dir(args, "given", seed)).model(model), "test")
            patient = read_predictions(RunDir(run_dir(args, "patient", seed)).model(model), "test")
            ci = unpaired_bootstrap_difference(
                given[1], given[2], patient[1], patient[2], "binary", ["auc"], n_resamples=args.resamples, seed=0
            )["auc"]
            rows.append({"model": model, "seed": seed, "diff": ci.point, "low": ci.low, "high": ci.high})
    return rows


def svm_seed_check(source: str, args) -> dict[str, Any]:
    """svm trained again with seed 1 on the given split: the largest |difference| of its test
    probabilities from the seed-0 run's (0 when the seed does not matter)."""
    from benchmarks.bench_train import read_predictions
    from medlens.runs import RunDir
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    other = args.work / "given" / "svm-seed1"
    if not RunDir(other).model(CLASSICAL).predictions("test").is_file():
        print("given: svm again with seed 1 (determinism check)", flush=True)
        config = TrainConfig(source=source, model=CLASSICAL, out=str(other), seed=1, progress=False)
        train(config.updated(max_samples=args.max_samples, threads=args.threads))
    first = read_predictions(RunDir(run_dir(args, "given", args.seeds[0])).model(CLASSICAL), "test")
    second = read_predictions(RunDir(other).model(CLASSICAL), "test")
    a, b = dict(zip(first[0], first[2][:, 1])), dict(zip(second[0], second[2][:, 1]))
    common = sorted(set(a) & set(b))
    return {
        "n": len(common),
        "max_abs_diff": float(max(abs(a[i] - b[i]) for i in common)) if common else None,
        "same_ids": set(a) == set(b),
    }


# -- the CHASE_DB1 -> HRF external validation -------------------------------------------------
def hrf_subset(hrf: Path, work: Path, n: int) -> Path:
    """A folder with HRF's layout holding links to its first ``n`` images (``--quick``)."""
    out = work / f"hrf-first{n}"
    if out.is_dir():
        return out
    stems = sorted(p.stem for p in (hrf / "images").iterdir())[:n]
    for folder in ("images", "manual1", "mask"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for p in (hrf / folder).iterdir():
            if any(p.name.startswith(s + ".") or p.name.startswith(s + "_mask.") for s in stems):
                (out / folder / p.name).symlink_to(p)
    return out


def hrf_median_scale(hrf: str, chase: Path, run: Path) -> float:
    """Median over the HRF images of ``bench_segmentation.hrf_scale`` for the run's training ids."""
    from benchmarks.bench_segmentation import chase_fov_width, hrf_scale
    from medlens.data.sources import open_source
    from medlens.data.splits import read_splits

    width = chase_fov_width(chase, read_splits(run / "splits.json")["splits"]["train"])
    ds = open_source(hrf)
    return float(np.median([hrf_scale(ds.load(i).meta["fov"], width) for i in range(len(ds.records))]))


def run_external(args) -> dict[str, Any]:
    """``evaluate_external`` on a copy of each CHASE_DB1 seed's run folder; a skip reason when it cannot run."""
    from medlens.errors import MedlensError
    from medlens.study.external import evaluate_external

    runs = sorted(p for p in args.chase_runs.glob("seed*") if (p / "comparison.json").is_file())
    if not runs:
        return {"skipped": f"no evaluated CHASE_DB1 run folder (seed*/comparison.json) under {args.chase_runs}"}
    hrf = args.data / "hrf"
    if args.quick:
        hrf = hrf_subset(hrf, args.work / "external", QUICK["hrf_images"])
    out: dict[str, Any] = {"chase_runs": str(args.chase_runs), "hrf": str(hrf), "seeds": {}}
    for original in runs:
        copy = args.work / "external" / original.name
        if not copy.is_dir():
            shutil.copytree(original, copy, symlinks=True)
        scale = hrf_median_scale(str(hrf), args.data / "chasedb1", copy)
        print(f"external {original.name}: HRF at scale {scale:.3f}", flush=True)
        try:
            entry = evaluate_external(
                copy,
                str(hrf),
                scale=scale,
                n_resamples=args.resamples,
                seed=0,
                report=not args.quick,
                log=lambda msg, s=original.name: print(f"  {s}: {msg}", flush=True),
            )
        except MedlensError as e:
            if "not yet" in str(e):
                return {"skipped": f"evaluate --on cannot validate a segmentation run yet ({e})"}
            raise
        out["seeds"][original.name] = {"scale": scale, "entry": entry}
    return out


# -- markdown ---------------------------------------------------------------------------------
def ci(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]``, or n/a."""
    if not m or not isinstance(m.get("value"), (int, float)) or not np.isfinite(m["value"]):
        return "n/a"
    if not isinstance(m.get("low"), (int, float)) or not isinstance(m.get("high"), (int, float)):
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def spread(values: list[float], digits: int = 3) -> str:
    """mean ± sd (sd 0 for one value)."""
    values = [v for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def p_text(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def model_rows(runs: dict[int, dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """(model, seed, run) for every trained model of a mode, classical first."""
    rows = [(m, s, r) for s, r in runs.items() for m in r["auc"] if m == CLASSICAL]
    return rows + [(m, s, r) for s, r in runs.items() for m in r["auc"] if m != CLASSICAL]


def auc_table(modes: dict[str, dict[int, dict[str, Any]]], leak: list[dict[str, Any]]) -> list[str]:
    """Test AUC per mode, model and seed, mean ± sd over seeds, and the leak's effect."""
    lines = [
        "| model | seed | given split: test AUC [95% CI] | patient-level: test AUC [95% CI] | given − patient [95% CI] |",
        "|---|---|---|---|---|",
    ]
    diffs = {(r["model"], r["seed"]): r for r in leak}
    given, patient = modes.get("given", {}), modes.get("patient", {})
    for model, seed, run in model_rows(given):
        other = (patient.get(seed) or {}).get("auc", {}).get(model)
        d = diffs.get((model, seed))
        diff = "n/a" if d is None else ci({"value": d["diff"], "low": d["low"], "high": d["high"]})
        lines.append(f"| {model} | {seed} | {ci(run['auc'][model])} | {ci(other)} | {diff} |")
    seeds = [s for s, r in given.items() if DEEP in r["auc"]]
    if len(seeds) > 1:
        g = [given[s]["auc"][DEEP]["value"] for s in seeds]
        p = [patient[s]["auc"][DEEP]["value"] for s in seeds if DEEP in (patient.get(s) or {}).get("auc", {})]
        d = [diffs[(DEEP, s)]["diff"] for s in seeds if (DEEP, s) in diffs]
        lines.append(f"| {DEEP} | mean ± sd ({len(seeds)}) | {spread(g)} | {spread(p)} | {spread(d)} |")
    return lines


def splitting_line(mode: str, runs: dict[int, dict[str, Any]]) -> str:
    first = next(iter(runs.values()))
    s = first.get("splitting") or {}
    n = first.get("n") or {}
    sizes = " / ".join(str(n.get(k, "?")) for k in ("train", "val", "test"))
    return (
        f"- {mode}: {s.get('description', 'n/a')}; patients in more than one split: "
        f"{s.get('patients_across_splits', 'n/a')} (the source's given splits: "
        f"{s.get('patients_across_given_splits', 'n/a')}); train / val / test {sizes}"
    )


def subgroup_tables(mode: str, runs: dict[int, dict[str, Any]]) -> list[str]:
    """Per column: a row per model, seed and group; then the gaps with their tests."""
    lines: list[str] = []
    first = next(iter(runs.values())).get("subgroups") or {}
    if not first.get("available"):
        return [f"Subgroups ({mode}): not available ({first.get('reason', 'no subgroups section')})."]
    for column, col in first["columns"].items():
        banding = f", bands {col['edges']} ({col['banding']})" if col.get("edges") else ""
        lines += [
            "",
            f"**{mode} split, by {column}**{banding}:",
            "",
            "| model | seed | group | n | prevalence | AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] |",
            "|---|---|---|---:|---:|---|---|---|",
        ]
        gaps = []
        for model, seed, run in model_rows(runs):
            entry = (((run.get("subgroups") or {}).get("columns") or {}).get(column) or {}).get("models", {}).get(model)
            if entry is None:
                continue
            for group in col["order"]:
                g = entry["groups"].get(group)
                if g is None:
                    continue
                prev = "n/a" if g.get("prevalence") is None else f"{g['prevalence']:.2f}"
                if g.get("status") != "ok":
                    lines.append(f"| {model} | {seed} | {group} | {g['n']} | {prev} | too small | | |")
                    continue
                lines.append(
                    f"| {model} | {seed} | {group} | {g['n']} | {prev} | {ci(g['auc'])} | "
                    f"{ci(g['sensitivity'])} | {ci(g['specificity'])} |"
                )
            for metric, gap in entry.get("gaps", {}).items():
                if gap:
                    gaps.append(
                        f"| {model} | {seed} | {metric} | {gap['high']} − {gap['low']} | "
                        f"{ci({'value': gap['diff'], 'low': gap['ci_low'], 'high': gap['ci_high']})} | "
                        f"{gap['method']} | {p_text(gap.get('p_value'))} | {p_text(gap.get('p_holm'))} |"
                    )
        if gaps:
            lines += [
                "",
                "| model | seed | metric | largest gap (high − low) | difference [95% CI] | test | p | Holm p |",
                "|---|---|---|---|---|---|---|---|",
                *gaps,
            ]
        else:
            lines += ["", "No gap: fewer than two groups large enough."]
    return lines


def shortcut_tables(mode: str, runs: dict[int, dict[str, Any]]) -> list[str]:
    """The metadata-only baseline against each image model, and each score's attribute AUCs."""
    first = next(iter(runs.values())).get("shortcuts") or {}
    if not first.get("available"):
        return [f"Shortcut checks ({mode}): not available ({first.get('reason', 'no shortcuts section')})."]
    base = first.get("metadata_baseline") or {}
    lines = [
        "",
        f"**{mode} split, metadata-only baseline** (logistic regression on "
        f"{', '.join(base.get('columns') or [])}, fitted on train): test AUC "
        f"{ci((base.get('metrics') or {}).get('auc'))}.",
        "",
        "| model | seed | image AUC | metadata AUC | image − metadata [95% CI] | DeLong p | verdict |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for model, seed, run in model_rows(runs):
        for c in ((run.get("shortcuts") or {}).get("metadata_baseline") or {}).get("comparisons", []):
            if c["model"] != model:
                continue
            if "error" in c:
                lines.append(f"| {model} | {seed} | | | {c['error']} | | |")
                continue
            diff = ci({"value": c["diff"], "low": c["ci_low"], "high": c["ci_high"]})
            lines.append(
                f"| {model} | {seed} | {c['image_auc']:.3f} | {c['metadata_auc']:.3f} | {diff} | "
                f"{p_text(c['p_value'])} | {c['verdict']} |"
            )
    columns = [c["name"] for c in (first.get("columns") or {}).get("used", [])]
    lines += [
        "",
        f"**{mode} split, attributes from the image model's score** (AUC oriented >= 0.5, DeLong CI; "
        "higher for; numeric: above the median vs the rest):",
        "",
        "| model | seed | label AUC | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---|" * len(columns),
    ]
    for model, seed, run in model_rows(runs):
        entries = {
            e["attribute"]: e
            for e in (((run.get("shortcuts") or {}).get("attribute_prediction") or {}).get("models") or {}).get(
                model, []
            )
        }
        cells = []
        for column in columns:
            e = entries.get(column) or {}
            cells.append(
                e.get("error", "n/a")
                if "auc" not in e
                else f"{ci({'value': e['auc'], 'low': e['low'], 'high': e['high']})} ({e['higher_for']})"
            )
        lines.append(f"| {model} | {seed} | {run['auc'][model]['value']:.3f} | " + " | ".join(cells) + " |")
    left_out = (first.get("columns") or {}).get("left_out") or []
    if left_out:
        lines += ["", "Left out: " + "; ".join(f"{c['name']} ({c['reason']})" for c in left_out) + "."]
    found = sorted({f for r in runs.values() for f in ((r.get("shortcuts") or {}).get("findings") or [])})
    if found:
        lines += ["", "Findings (evaluate's own sentences, every seed):", "", *[f"- {f}" for f in found]]
    return lines


def study_md(res: dict[str, Any], args) -> str:
    modes = res["modes"]
    check = res["svm_seed_check"]
    largest = "n/a" if check["max_abs_diff"] is None else f"{check['max_abs_diff']:.2g}"
    lines = [
        f"NIH chest X-rays (`{NIH}`, 1000 images 64x64, normal / abnormal). `{CLASSICAL}` (seed "
        f"{args.seeds[0]}) and `{DEEP}` ({args.epochs} epochs; seeds {', '.join(map(str, args.seeds))}) trained by "
        f"`medlens compare` on each split mode, `--by {','.join(BY)}`, age bands "
        f"{', '.join(f'{e:g}' for e in BANDS['age'])} (fixed before any result), minimum group {args.min_group}; "
        f"95% stratified bootstrap CIs ({args.resamples} resamples). The patient-level split is one split "
        f"(seed {SPLIT_SEED}) shared by every seed.",
        "",
        "Splits:",
        "",
        *[splitting_line(mode, runs) for mode, runs in modes.items()],
        "",
        "Test AUC and the leak's effect (given minus patient-level; the two test sets hold different images, "
        "so the difference's interval comes from independent resamples of each):",
        "",
        *auc_table(modes, res["leak"]),
        "",
        f"`{CLASSICAL}` trained again with seed 1 on the given split: largest |difference| of its "
        f"{check['n']} test probabilities from seed {args.seeds[0]}'s: {largest}"
        + ("" if check["same_ids"] else " (not the same test ids: --quick caps each split by seed)")
        + ".",
        "",
        "### Subgroups",
        "",
        "Sensitivity and specificity at the decision threshold chosen on validation; *largest gap*: the groups "
        "with the highest and lowest value, its interval from independent resamples, *p* the test that the "
        "metric is the same in every eligible group (AUC: DeLong Q; sensitivity / specificity: Fisher or "
        "chi-square), Holm over the column's tests.",
    ]
    for mode, runs in modes.items():
        lines += subgroup_tables(mode, runs)
    lines += ["", "### Shortcut checks"]
    for mode, runs in modes.items():
        lines += shortcut_tables(mode, runs)
    return "\n".join(lines) + "\n"


def external_md(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"Skipped: {res['skipped']}.\n"
    lines = [
        f"The CHASE_DB1 runs of `bench_segmentation.py` ({res['chase_runs']}, copied) on every image of "
        f"`{res['hrf']}` through `evaluate --on` with `--scale` (the median of the per-image factor giving HRF "
        "CHASE_DB1's pixels per degree). Vessel class, means over images with 95% bootstrap CIs; internal: "
        "CHASE_DB1's test images; difference: external minus internal, independent resamples.",
        "",
        "| run | scale | model | metric | CHASE_DB1 test | HRF | HRF − CHASE_DB1 [95% CI] |",
        "|---|---:|---|---|---|---|---|",
    ]
    for seed, s in res["seeds"].items():
        for model, m in s["entry"]["models"].items():
            for cls, metrics in m["by_class"].items():
                for metric in SEGMENTATION_METRICS:
                    cell = metrics.get(metric)
                    if cell is None:
                        continue
                    name = metric if len(m["by_class"]) == 1 else f"{cls} {metric}"
                    lines.append(
                        f"| {seed} | {s['scale']:.3f} | {model} | {name} | {ci(cell['internal'])} | "
                        f"{ci(cell['external'])} | {ci(cell['difference'])} |"
                    )
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".evaluation")
    parser.add_argument("--only", default=",".join(PARTS), help="parts, comma-separated: study, external")
    parser.add_argument("--seeds", default="0,1,2", help="cnn-small's seeds (svm: the first)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="cnn-small's epochs")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--chase-runs", type=Path, default=None, help=f"default {DEFAULT_CHASE_RUNS} (read only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke run); never records")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only takes {', '.join(PARTS)}, not {', '.join(unknown)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.max_samples, args.min_group = None, MIN_GROUP
    if args.quick:  # one torch thread: on a shared machine two-thread kernels stall behind other processes
        args.work, args.seeds = args.work / "quick", args.seeds[:1]
        args.epochs, args.resamples = QUICK["epochs"], QUICK["resamples"]
        args.max_samples, args.min_group = QUICK["max_samples"], QUICK["min_group"]
        args.threads = args.threads or 1
    args.chase_runs = args.chase_runs or (QUICK_CHASE_RUNS if args.quick else DEFAULT_CHASE_RUNS)
    needed = {"study": [NIH], "external": ["chasedb1", "hrf"]}
    missing = [d for p in parts for d in needed[p] if not (args.data / d).exists()]
    if missing:
        print(f"data not found under {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 1
    from medlens.progress import quiet_libraries

    quiet_libraries(False)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    sections: list[tuple[str, str, str]] = []
    if "study" in parts:
        study = run_study(args)
        results["study"] = study
        sections.append(
            ("evaluation-nih", "NIH chest X-rays: leaked split, subgroups, shortcuts", study_md(study, args))
        )
    if "external" in parts:
        external = run_external(args)
        results["external"] = external
        sections.append(("evaluation-external", "CHASE_DB1 -> HRF through evaluate --on", external_md(external)))
    results_file.write_text(json.dumps(results, indent=1, default=float))
    for key, title, body in sections:
        print(f"\n## Evaluation: {title}\n\n{body}")
        if not (args.quick or args.no_record):
            record_section(key, f"Evaluation: {title} (bench_evaluation.py)", body)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; results in {results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
