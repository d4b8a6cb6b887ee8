"""`medlens compare` and `medlens evaluate`: parse, call medlens.study, print the summary."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import SOURCE_ARG_HELP, console, err_console

BY_HELP = (
    "Subgroups (binary tasks): attribute columns joined by commas — a CSV manifest's other columns (sex, age, "
    "site, ...) or DICOM PatientSex, PatientAge, ViewPosition, Manufacturer, BodyPartExamined."
)
BANDS_HELP = "With --by: band edges of a numeric column, e.g. age=40,60,80 (repeatable). Default: its quartiles."
MIN_GROUP_HELP = "With --by: subgroups with fewer cases (default 30), or under 5 positives or negatives, are too small."


def compare(
    source: str = typer.Argument(None, help=SOURCE_ARG_HELP),
    suite: str = typer.Option(
        None,
        "--suite",
        "-s",
        help="quick | standard | full (classification), seg-quick | seg | full (segmentation), or model names "
        "joined by commas. Default: quick, or seg-quick for a segmentation source.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (created; models share its splits.json)."),
    budget_minutes: float = typer.Option(
        None, "--budget-minutes", help="Scale deep models' epochs down to fit this training time."
    ),
    seed: int = typer.Option(0, "--seed", help="The one seed for splits, training and the bootstrap."),
    max_samples: int = typer.Option(None, "--max-samples", help="Use at most N samples per split (quick runs)."),
    epochs: int = typer.Option(None, "--epochs", help="Cap every deep model's epochs (quick checks)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the confidence intervals."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch (default: one per core)."),
    resplit: str = typer.Option(
        None,
        "--resplit",
        help="patient: ignore the source's splits and make a seeded, stratified patient-level split "
        "(no patient in two splits). Default: the source's splits.",
    ),
    drop_duplicates: str = typer.Option(
        None,
        "--drop-duplicates",
        help="exact | near: drop the images whose exact (or near) copy `data audit` finds in an earlier split "
        "(train, val, test); listed in RUN/dropped.csv.",
    ),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    bands: list[str] = typer.Option(None, "--bands", help=BANDS_HELP),
    min_group: int = typer.Option(None, "--min-group", help=MIN_GROUP_HELP),
    pretrain_epochs: int = typer.Option(
        None,
        "--pretrain-epochs",
        help="Also train each deep model from weights pretrained for N epochs without labels (SimCLR; "
        "segmentation networks: masked inpainting) on the run's training and validation images, as "
        "MODEL+pretrained (outside the budget).",
    ),
    list_suites: bool = typer.Option(False, "--list-suites", help="Print the suites and their models, then exit."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Train a suite of classical and deep models on SOURCE with identical splits and compare them."""
    if list_suites:
        print_suites()
        return
    from medlens.errors import MedlensError
    from medlens.study.compare import compare as run_compare

    if source is None:
        raise MedlensError("give a SOURCE (or --list-suites)")
    if out is None:
        raise MedlensError("give the run directory with --out")
    run = run_compare(
        source,
        suite,
        out,
        seed=seed,
        budget_minutes=budget_minutes,
        max_samples=max_samples,
        show_progress=not no_progress,
        epochs=epochs,
        n_resamples=resamples,
        threads=threads,
        log=_log,
        resplit=resplit,
        drop_duplicates=drop_duplicates,
        pretrain_epochs=pretrain_epochs,
        **_subgroup_args(by, bands, min_group),
    )
    print_summary(run.root)


def evaluate(
    run: Path = typer.Argument(..., help="Run directory written by `medlens train` or `medlens compare`."),
    split: str = typer.Option("test", "--split", help="The split to evaluate on: test | val."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the confidence intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the localization subset."),
    target_risk: float = typer.Option(
        0.05, "--target-risk", help="Abstention: error rate to reach among answered cases (chosen on val)."
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Do not (re)build report.html."),
    on: str = typer.Option(
        None,
        "--on",
        help="External validation: apply every model unchanged (its preprocessing, temperature and threshold) "
        "to all images of this other labelled SOURCE, classes matched by name; adds comparison.json's external.",
    ),
    class_map: Path = typer.Option(
        None, "--class-map", help="With --on: a JSON object or CSV (header external,model) mapping class names."
    ),
    scale: float = typer.Option(
        None,
        "--scale",
        help="With --on, segmentation runs: resize each external image by this factor before segmenting "
        "(another camera resolution or field of view); scored at native size.",
    ),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    bands: list[str] = typer.Option(None, "--bands", help=BANDS_HELP),
    min_group: int = typer.Option(None, "--min-group", help=MIN_GROUP_HELP),
) -> None:
    """Rebuild comparison.json (CIs, tests, calibration, abstention, localization) from a run's artifacts."""
    if on is not None or class_map is not None or scale is not None:
        from medlens.cli.external import evaluate_on

        others = [o for o, given in (("--split", split != "test"), ("--by", by is not None)) if given]
        evaluate_on(
            run, on, class_map, others, scale=scale, resamples=resamples, seed=seed, report=not no_report, log=_log
        )
        return
    from medlens.study.evaluate import evaluate as run_evaluate

    run_evaluate(
        run,
        split=split,
        n_resamples=resamples,
        seed=seed,
        target_risk=target_risk,
        report=not no_report,
        log=_log,
        **_subgroup_args(by, bands, min_group),
    )
    print_summary(run)


def _subgroup_args(by: str | None, bands: list[str] | None, min_group: int | None) -> dict:
    """evaluate()'s subgroup keywords from the options (a one-line error for a bad one)."""
    from medlens.errors import MedlensError
    from medlens.study.subgroups import parse_bands

    columns = [c.strip() for c in (by or "").split(",") if c.strip()]
    if bands and not columns:
        raise MedlensError("--bands needs --by")
    if min_group is not None and min_group < 1:
        raise MedlensError(f"--min-group must be at least 1, not {min_group}")
    return {"by": columns, "bands": parse_bands(bands), **({} if min_group is None else {"min_group": min_group})}


def _log(message: str) -> None:
    err_console.print(f"[dim]medlens[/dim] {message}", highlight=False)


def print_suites() -> None:
    from rich.table import Table

    from medlens.study.suites import describe_suites

    table = Table(title="suites (`medlens compare SOURCE --suite NAME`)")
    for col in ("suite", "task", "dims", "model", "kind", "epochs"):
        table.add_column(col)
    for row in describe_suites():
        table.add_row(
            row["suite"],
            row["task"],
            f"{row['dims']}D",
            row["model"],
            row["kind"],
            "" if row["epochs"] is None else str(row["epochs"]),
        )
    console.print(table)


def print_summary(run_dir: Path | str) -> None:
    """The summary table of comparison.json: AUC and ACC with 95% CIs, best marked, pairwise p-values."""
    from rich.table import Table

    from medlens.runs import RunDir, read_json
    from medlens.study.comparison import summary_rows

    run = RunDir(run_dir)
    comparison = read_json(run.comparison)
    if comparison.get("segmentation"):
        print_segmentation_summary(run, comparison)
        return
    split = comparison.get("split", "test")
    rows = summary_rows(comparison)
    table = Table(
        title=f"{comparison.get('source')} — {split} split, 95% bootstrap CIs "
        f"({comparison['ci']['n_resamples']} resamples); * = best"
    )
    for col in ("model", "kind", "AUC [95% CI]", "ACC [95% CI]", "T", "abstain: coverage@risk", "pointing"):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    for row in rows:
        e = comparison["models"][row["model"]]
        a = e.get("abstention") or {}
        loc = e.get("localization") or {}
        table.add_row(
            row["model"] + (" (serve)" if comparison["best"].get("model") == row["model"] else ""),
            row["kind"] or "",
            _ci(row, "auc"),
            _ci(row, "acc"),
            _num(e.get("temperature"), 2),
            f"{_num(a.get('test_coverage'), 2)} @ {_num(a.get('test_risk'), 3)}" if a else "-",
            _num(loc.get("pointing_game"), 2),
        )
    console.print(table)
    tests = (comparison.get("pairwise") or {}).get("tests") or []
    if tests:
        pt = Table(title="pairwise tests (p raw / Holm-adjusted over all tests)")
        for col in ("A", "B", "metric", "method", "diff A-B", "p", "p Holm"):
            pt.add_column(col, justify="left" if col in ("A", "B", "metric", "method") else "right")
        for t in tests:
            p_holm = t.get("p_holm")
            mark = " *" if t.get("significant") else ""
            method = {"paired_bootstrap": "bootstrap"}.get(t["method"], t["method"])
            pt.add_row(
                t["a"], t["b"], t["metric"], method, _num(t.get("diff"), 3), _p(t.get("p_value")), _p(p_holm) + mark
            )
        console.print(pt)
    _print_ensembles(comparison)
    from medlens.study.subgroups import gap_lines

    for line in gap_lines(comparison):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(f"comparison: {run.comparison}", soft_wrap=True, highlight=False)
    if run.report.is_file():
        console.print(f"report: {run.report}", soft_wrap=True, highlight=False)


def _print_ensembles(comparison: dict) -> None:
    """The ensembles (comparison entries, never served): AUC and ACC with CIs, and the AUC test
    against the member with the highest AUC."""
    from rich.table import Table

    ens = comparison.get("ensembles") or {}
    if not ens.get("models"):
        return
    split = comparison.get("split", "test")
    table = Table(title="ensembles (compared, never served; stacking fitted on validation)")
    for col in ("ensemble", "members", "AUC [95% CI]", "ACC [95% CI]", "vs best member (AUC)", "p Holm"):
        table.add_column(col, justify="left" if col in ("ensemble", "members") else "right")
    tests = (ens.get("pairwise") or {}).get("tests") or []
    for name in ens.get("order") or list(ens["models"]):
        e = ens["models"][name]
        m = (e.get("metrics") or {}).get(split) or {}
        row: dict = {}
        for k in ("auc", "acc"):
            ci = m.get(k) or {}
            row[k], row[f"{k}_low"], row[f"{k}_high"] = ci.get("value"), ci.get("low"), ci.get("high")
        best = max(e["members"], key=lambda n: _auc(comparison, n, split) or -1.0)
        t = next((t for t in tests if t["a"] == name and t["b"] == best and t["metric"] == "auc"), {})
        mark = " *" if t.get("significant") else ""
        table.add_row(
            name,
            ", ".join(e["members"]),
            _ci(row, "auc"),
            _ci(row, "acc"),
            f"{_num(t.get('diff'), 3)} vs {best}",
            _p(t.get("p_holm")) + mark,
        )
    console.print(table)


def _auc(comparison: dict, model: str, split: str) -> float | None:
    metrics = ((comparison["models"].get(model) or {}).get("metrics") or {}).get(split) or {}
    return (metrics.get("auc") or {}).get("value")


SEG_HEADERS = {"dice": "Dice", "hd95": "HD95 mm", "nsd": "NSD"}


def print_segmentation_summary(run, comparison: dict) -> None:
    """The summary of a segmentation comparison: per model the mean over classes of Dice, HD95 and
    NSD with 95% CIs, mean Dice per class, and the paired Wilcoxon tests (Holm-adjusted)."""
    from rich.table import Table

    seg = comparison["segmentation"]
    best = (comparison.get("best") or {}).get("model")
    table = Table(
        title=f"{comparison.get('source')} — {seg['split']} split, mean over classes, 95% bootstrap CIs "
        f"({comparison['ci']['n_resamples']} resamples)"
    )
    for col in ("model", "kind", "cases", *[SEG_HEADERS[m] + " [95% CI]" for m in seg["metrics"]]):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    for model, entry in seg["models"].items():
        means = entry.get("mean_over_classes") or {}
        table.add_row(
            model + (" (serve)" if best == model else ""),
            (comparison["models"].get(model) or {}).get("kind") or "",
            str(entry.get("n_cases", "")),
            *[_seg_ci(means.get(m)) for m in seg["metrics"]],
        )
    console.print(table)
    classes = list(seg.get("classes") or [])
    if len(classes) > 1:
        ct = Table(title="Dice per class [95% CI]")
        for col in ("model", *classes):
            ct.add_column(col, justify="left" if col == "model" else "right")
        for model, entry in seg["models"].items():
            by_class = entry.get("by_class") or {}
            ct.add_row(model, *[_seg_ci((by_class.get(c) or {}).get("dice")) for c in classes])
        console.print(ct)
    tests = (seg.get("pairwise") or {}).get("tests") or []
    if tests:
        pt = Table(title="paired tests per case (Wilcoxon signed-rank; p raw / Holm-adjusted over all tests)")
        for col in ("A", "B", "metric", "class", "diff A-B", "p", "p Holm"):
            pt.add_column(col, justify="left" if col in ("A", "B", "metric", "class") else "right")
        for t in tests:
            mark = " *" if t.get("significant") else ""
            pt.add_row(
                t["a"],
                t["b"],
                t["metric"],
                str(t.get("class", "")),
                _num(t.get("diff"), 3),
                _p(t.get("p_value")),
                _p(t.get("p_holm")) + mark,
            )
        console.print(pt)
    console.print(f"comparison: {run.comparison}", soft_wrap=True, highlight=False)
    if run.report.is_file():
        console.print(f"report: {run.report}", soft_wrap=True, highlight=False)


def _seg_ci(stat: dict | None) -> str:
    if not stat or stat.get("value") is None:
        return "-"
    return f"{stat['value']:.3f} [{_num(stat.get('low'), 3)}, {_num(stat.get('high'), 3)}]"


def _ci(row: dict, metric: str) -> str:
    value = row.get(metric)
    if value is None:
        return "-"
    star = "*" if metric in row.get("best", []) else " "
    return f"{value:.3f} [{_num(row.get(metric + '_low'), 3)}, {_num(row.get(metric + '_high'), 3)}]{star}"


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.command(name="compare")(compare)
    app.command(name="evaluate")(evaluate)
