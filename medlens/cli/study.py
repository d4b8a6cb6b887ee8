"""`medlens compare` and `medlens evaluate`: parse, call medlens.study, print the summary."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import SOURCE_ARG_HELP, console, err_console


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
) -> None:
    """Rebuild comparison.json (CIs, tests, calibration, abstention, localization) from a run's artifacts."""
    from medlens.study.evaluate import evaluate as run_evaluate

    run_evaluate(
        run, split=split, n_resamples=resamples, seed=seed, target_risk=target_risk, report=not no_report, log=_log
    )
    print_summary(run)


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
    console.print(f"comparison: {run.comparison}", soft_wrap=True, highlight=False)
    if run.report.is_file():
        console.print(f"report: {run.report}", soft_wrap=True, highlight=False)


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
