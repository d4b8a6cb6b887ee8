"""`medlens data info|audit|convert|synth`."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import SKIP_BAD_HELP, SOURCE_ARG_HELP, console, err_console, print_json, report_skipped
from medlens.errors import MedlensError

app = typer.Typer(help="Inspect, audit, convert and generate data.", no_args_is_help=True)


@app.command()
def info(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON."),
    montage: Path = typer.Option(None, "--montage", help="Write a montage of samples per class to this PNG."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
) -> None:
    """Counts per split and class, shapes, spacings, intensities and modality of a SOURCE; for
    segmentation sources also label values, foreground fraction per class and image/mask mismatches."""
    from medlens.data.fingerprint import compute_fingerprint, render_fingerprint
    from medlens.data.sources import open_source

    dataset = open_source(source, skip_bad=skip_bad)
    fp = compute_fingerprint(dataset, skip_bad=skip_bad, show_progress=not as_json)
    if montage is not None:
        from medlens.data.montage import save_montage

        save_montage(dataset, montage)
        fp["montage"] = str(montage)
    if as_json:
        print_json(fp)
        report_skipped(dataset.problems)
    else:
        render_fingerprint(fp, console)  # lists the problems itself


@app.command()
def audit(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when samples leak across splits."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
) -> None:
    """Unreadable files, unpaired images/labels/masks, duplicates within and across splits, patient leakage,
    imbalance; for segmentation sources also label values, foreground fraction and image/mask mismatches."""
    from medlens.data.audit import audit_dataset, render_audit
    from medlens.data.sources import open_source

    # The audit reports unreadable files itself, so it always reads past them.
    dataset = open_source(source, skip_bad=True)
    report = audit_dataset(dataset, show_progress=not as_json)
    if as_json:
        print_json(report)
    else:
        render_audit(report, console)
    if report.get("unreadable") and not skip_bad and not as_json:
        err_console.print("[yellow]unreadable files were found; see above[/yellow]")
    if strict and report.get("leakage_found"):
        raise typer.Exit(1)


@app.command()
def convert(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP),
    out: Path = typer.Argument(..., help="Output folder."),
    to: str = typer.Option(..., "--to", help="Output format: nifti, npz or png."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
) -> None:
    """Convert a SOURCE (e.g. a DICOM study) to NIfTI volumes, an npz archive or PNG images."""
    from medlens.data.convert import FORMATS, convert_dataset
    from medlens.data.sources import open_source

    if to not in FORMATS:
        raise MedlensError(f"unknown output format '{to}' (choose from {', '.join(FORMATS)})")
    dataset = open_source(source, skip_bad=skip_bad)
    written = convert_dataset(dataset, out, to)
    console.print(f"wrote {len(written)} file(s) to {out}")
    report_skipped(dataset.problems)


@app.command()
def synth(
    source: str = typer.Argument(
        ..., help="synthetic:chest2d or synthetic:nodule3d (the -seg variants are read in place, not written)"
    ),
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("png", "--format", help="png, dicom, nifti or npz."),
    n_per_class: int = typer.Option(None, "--n-per-class", help="Samples per class (default: the generator's)."),
    size: int = typer.Option(None, "--size", help="Image side in pixels (default: the generator's)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same images."),
) -> None:
    """Generate a synthetic dataset with lesion masks and write it to disk, readable by the same readers as real data."""
    from medlens.data.synth_writer import FORMATS, write_synthetic

    if not source.startswith("synthetic:"):
        raise MedlensError("expected synthetic:NAME (e.g. synthetic:chest2d)", source)
    if "-seg" in source:
        raise MedlensError(
            "write the generator without -seg: every written set carries the lesion masks (masks/ and the "
            "manifest's mask column); synthetic:NAME-seg is read in place by train, data info, ...",
            source,
        )
    if fmt not in FORMATS:
        raise MedlensError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    written = write_synthetic(source.partition(":")[2], out, fmt, seed=seed, n_per_class=n_per_class, size=size)
    console.print(f"wrote {written} sample(s) to {out} as {fmt}")
