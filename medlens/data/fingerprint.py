"""Dataset fingerprint: what a source holds, as plain JSON (``medlens data info``, ``fingerprint.json``).

:func:`compute_fingerprint` returns a JSON-able dict. It is printed by ``medlens data info --json``
and written as ``runs/NAME/fingerprint.json``, which the training planner reads, so its keys are a
contract: add keys freely, never rename or remove one without bumping ``schema``.

Keys (``schema`` = ``"medlens.fingerprint/1"``):

``source``, ``name``
    The SOURCE string the dataset was opened from and its short name.
``task``, ``dims``, ``modality``, ``class_names``
    As declared by the reader (``task`` is a :class:`~medlens.data.sample.Task` value).
``n_samples``, ``n_unreadable``, ``n_patients``
    Readable samples (with ``skip_bad``, those that failed to load are ``n_unreadable``, listed in
    ``problems`` and left out of every count), and their patients.
``splits``
    ``{split: {"n": int, "classes": {class_name: count}}}`` using the source's own splits
    (``Record.split``); a source without splits has the single key ``"unsplit"``. ``classes``
    is empty for tasks without class labels (segmentation, none). Records without a label in a
    labelled task are counted under ``"(unlabelled)"``.
``class_counts``, ``class_balance``, ``imbalance_ratio``
    Counts over all splits, the same as fractions of ``n_samples`` (for multi-label: the fraction
    of samples positive for each class), and max/min count (``None`` when not applicable or a
    class has no sample).
``shapes``
    ``{"from": "all"|"sample", "n": int, "n_distinct": int, "distinct": [{"shape": [C, ...],
    "count": int}] (most common first, at most 20), "min": [...], "median": [...], "max": [...]}``;
    shapes are channels first, as in :class:`~medlens.data.sample.Sample`; min/median/max are over
    the spatial axes. ``"from": "all"`` when every sample's shape is known (e.g. MedMNIST arrays),
    otherwise the shapes of the samples read for the intensity statistics.
``channels``
    ``{str(n_channels): count}`` over the same samples as ``shapes``.
``spacings``
    ``None`` when no sample reports a spacing, else ``{"n": int, "n_distinct": int,
    "distinct": [{"spacing": [...], "count": int}], "median": [...]}`` in mm per spatial axis.
``intensity``
    ``{"sampled": bool, "n_samples": k, "of": n_samples, "seed": int, "min", "max", "mean",
    "std", "percentiles": {"0.5": v, "1": v, "5": v, "25": v, "50": v, "75": v, "95": v, "99": v,
    "99.5": v}}`` over the pixel values of a seeded random sample of at most
    ``max_samples_for_stats`` samples (``sampled`` is false when every sample was read). Min, max,
    mean and std are exact over those samples; percentiles come from a seeded subsample of their
    pixels. ``None`` when no sample could be read.
``masks``
    For samples with a mask (segmentation), from :class:`MaskSummary`: ``{"n": int,
    "class_fractions": {label_value: fraction of voxels}, "label_values": {label_value: cases
    containing it}, "classes": {class_name: {"cases": int, "foreground_fraction": {"mean", "min",
    "max"}}} (fraction of each case's voxels, over all cases with a mask), "undeclared_values":
    [label values beyond class_names], "geometry_mismatches": [{"id", "path", "problem"}]}`` (image
    and mask of another shape, or, for NIfTI, another spacing or affine); ``None`` otherwise.
``attributes``
    Per record attribute (sex, age, view position, ...; :mod:`medlens.data.attributes`):
    ``{"n_missing", "numeric": {"min", "median", "max"}}`` or ``{"n_missing", "counts": {value: n}}``
    (:func:`medlens.data.attributes.attribute_distribution`); ``{}`` for a source without them.
``problems``
    ``[{"path": str, "problem": str}]``: the reader's problems (unreadable or unpaired files) plus,
    with ``skip_bad``, samples that failed to load here.
``samples``
    For small sources (at most :data:`LIST_SAMPLES_UP_TO` samples) and ``Task.NONE`` (e.g. a DICOM
    study): ``[{"id", "split", "label", "modality", "shape", "spacing", "series_description",
    "origin"}]``; otherwise ``None``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from medlens import progress
from medlens.data.attributes import attribute_distribution
from medlens.data.sample import Dataset, Problem, Record, Sample, Task
from medlens.errors import MedlensError

SCHEMA = "medlens.fingerprint/1"
UNSPLIT = "unsplit"
UNLABELLED = "(unlabelled)"
LIST_SAMPLES_UP_TO = 64
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
MAX_DISTINCT = 20
_PERCENTILE_PIXELS = 2_000_000  # pixels kept (over all read samples) for the percentiles
_SERIES_KEYS = ("series_description", "SeriesDescription", "description")


def compute_fingerprint(
    dataset: Dataset,
    *,
    skip_bad: bool = False,
    show_progress: bool = True,
    max_samples_for_stats: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Describe ``dataset`` as a JSON-able dict (keys documented in the module docstring).

    Counts come from the records (no pixels read). Shapes, spacings and intensities come from a
    seeded sample of at most ``max_samples_for_stats`` samples, loaded lazily with a progress bar
    on stderr. An unreadable sample raises the reader's error unless ``skip_bad``, in which case it
    is listed in ``problems`` (and appended to ``dataset.problems``).
    """
    n = len(dataset)
    splits, class_counts, balance, ratio = _counts(dataset)
    want_listing = dataset.task is Task.NONE or n <= LIST_SAMPLES_UP_TO

    if want_listing or n <= max_samples_for_stats:
        indices = np.arange(n)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_samples_for_stats, replace=False))

    raw_shapes = _raw_array_shapes(dataset)
    stats = _PixelStats(len(indices), seed)
    shapes: Counter = Counter()
    spacings: Counter = Counter()
    masks = MaskSummary(dataset.class_names)
    listing: list[dict[str, Any]] = []
    problems = [_problem_dict(p) for p in dataset.problems]
    unreadable: set[int] = set()

    with progress.bar(len(indices), desc=f"reading {dataset.name}", disable=not show_progress) as bar:
        if raw_shapes is not None and not want_listing and _raw_stats(dataset, indices, stats, bar):
            indices = []  # every statistic came from the in-memory arrays
        for i in indices:
            record = dataset.records[int(i)]
            try:
                sample = dataset.load(int(i))
            except MedlensError as e:
                if not skip_bad:
                    raise
                unreadable.add(int(i))
                problem = Problem(record.origin, getattr(e, "problem", str(e)))
                problems.append(_problem_dict(problem))
                if all(p.path != problem.path for p in dataset.problems):
                    dataset.problems.append(problem)
                bar.update()
                continue
            stats.add(sample.image)
            shapes[tuple(int(s) for s in sample.image.shape)] += 1
            if sample.spacing is not None:
                spacings[tuple(round(float(s), 4) for s in sample.spacing)] += 1
            masks.add(record, sample)
            if want_listing:
                listing.append(_listing_entry(record, sample))
            bar.update()

    if unreadable:  # counts are of the samples that can be used: unreadable ones are listed as problems
        splits, class_counts, balance, ratio = _counts(dataset, skip=unreadable)
    shape_source = "sample"
    if raw_shapes is not None:
        shapes, shape_source = raw_shapes, "all"
    elif stats.n_samples == n:
        shape_source = "all"

    return {
        "schema": SCHEMA,
        "source": dataset.uri,
        "name": dataset.name,
        "task": dataset.task.value,
        "dims": dataset.dims,
        "modality": dataset.modality,
        "class_names": list(dataset.class_names),
        "n_samples": n - len(unreadable),
        "n_unreadable": len(unreadable),
        "n_patients": len({r.patient_id for k, r in enumerate(dataset.records) if k not in unreadable}),
        "splits": splits,
        "class_counts": class_counts,
        "class_balance": balance,
        "imbalance_ratio": ratio,
        "shapes": _shape_summary(shapes, shape_source),
        "channels": {str(k): v for k, v in sorted(_channel_counts(shapes).items())},
        "spacings": _spacing_summary(spacings),
        "intensity": stats.summary(of=n, seed=seed),
        "masks": masks.summary(),
        "attributes": attribute_distribution([r for k, r in enumerate(dataset.records) if k not in unreadable]),
        "problems": problems,
        "samples": listing if want_listing else None,
    }


# -- masks ----------------------------------------------------------------------------------


class MaskSummary:
    """What the masks of a segmentation source hold, one sample at a time (``data info`` and ``data audit``)."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.n = 0
        self.voxels: Counter = Counter()  # label value -> voxels over all masks
        self.cases: Counter = Counter()  # label value -> masks containing it
        self.fractions: list[dict[int, float]] = []  # per mask: label value -> fraction of its voxels
        self.mismatches: list[dict[str, str]] = []

    def add(self, record: Record, sample: Sample) -> None:
        if record.extra.get("mask_geometry"):  # found by the reader from the headers
            self._mismatch(record, record.extra.get("label", record.origin), record.extra["mask_geometry"])
        if sample.mask is None:
            return
        mask = np.asarray(sample.mask)
        if mask.shape != sample.image.shape[1:]:
            problem = f"mask shape {mask.shape} differs from image shape {sample.image.shape[1:]}"
            self._mismatch(record, record.origin, problem)
        values, counts = np.unique(mask, return_counts=True)
        self.n += 1
        total = max(int(mask.size), 1)
        self.fractions.append({int(v): c / total for v, c in zip(values.tolist(), counts.tolist())})
        for v, c in zip(values.tolist(), counts.tolist()):
            self.voxels[int(v)] += c
            self.cases[int(v)] += 1

    def _mismatch(self, record: Record, path: str, problem: str) -> None:
        self.mismatches.append({"id": record.id, "path": str(path), "problem": problem})

    def summary(self) -> dict[str, Any] | None:
        if not self.n and not self.mismatches:
            return None
        total = max(sum(self.voxels.values()), 1)
        declared = len(self.class_names)
        labels = sorted(set(self.voxels) | set(range(1, declared)))
        classes = {}
        for v in labels:
            if v == 0:
                continue
            share = [f.get(v, 0.0) for f in self.fractions] or [0.0]
            name = self.class_names[v] if v < declared else str(v)
            classes[name] = {
                "cases": self.cases.get(v, 0),
                "foreground_fraction": {
                    "mean": round(float(np.mean(share)), 6),
                    "min": round(float(np.min(share)), 6),
                    "max": round(float(np.max(share)), 6),
                },
            }
        return {
            "n": self.n,
            "class_fractions": {str(k): round(v / total, 6) for k, v in sorted(self.voxels.items())},
            "label_values": {str(k): self.cases[k] for k in sorted(self.cases)},
            "classes": classes,
            "undeclared_values": [v for v in sorted(self.voxels) if declared and v >= declared],
            "geometry_mismatches": self.mismatches,
        }


def render_masks(masks: dict[str, Any], console) -> None:
    """Print a :meth:`MaskSummary.summary`: a table per class, then mismatches and undeclared values."""
    from rich.table import Table

    table = Table(title=f"Masks ({masks['n']} cases)", title_justify="left")
    for column in ("class", "cases with it", "foreground mean", "min", "max"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, c in masks["classes"].items():
        f = c["foreground_fraction"]
        table.add_row(name, str(c["cases"]), f"{f['mean']:.2%}", f"{f['min']:.2%}", f"{f['max']:.2%}")
    console.print(table)
    values = ", ".join(f"{k} ({v} cases)" for k, v in masks["label_values"].items())
    console.print(f"label values found: {values}", highlight=False, markup=False)
    if masks["undeclared_values"]:
        console.print(f"[red]label values outside the declared classes:[/red] {masks['undeclared_values']}")
    for m in masks["geometry_mismatches"]:
        console.print(f"  geometry mismatch {m['path']}: {m['problem']}", markup=False, highlight=False)


# -- counts ---------------------------------------------------------------------------------


def _class_name(dataset: Dataset, label: int) -> str:
    if 0 <= label < len(dataset.class_names):
        return dataset.class_names[label]
    return str(label)


def _counts(dataset: Dataset, skip: set[int] = frozenset()) -> tuple[dict, dict | None, dict | None, float | None]:
    """Per split and class counts from the records (but those in ``skip``); overall counts, fractions and
    imbalance ratio."""
    labelled = dataset.task not in (Task.SEGMENTATION, Task.NONE)
    splits: dict[str, dict[str, Any]] = {}
    overall: Counter = Counter()
    for k, r in enumerate(dataset.records):
        if k in skip:
            continue
        entry = splits.setdefault(r.split or UNSPLIT, {"n": 0, "classes": {}})
        entry["n"] += 1
        if not labelled:
            continue
        if r.label is None:
            names = [UNLABELLED]
        elif dataset.task is Task.MULTILABEL:
            names = [_class_name(dataset, k) for k, on in enumerate(r.label) if on]
        else:
            names = [_class_name(dataset, int(r.label))]
        for name in names:
            entry["classes"][name] = entry["classes"].get(name, 0) + 1
            overall[name] += 1
    splits = dict(sorted(splits.items(), key=lambda kv: _split_order(kv[0])))
    if not labelled:
        return splits, None, None, None
    ordered = [c for c in dataset.class_names] + sorted(set(overall) - set(dataset.class_names))
    for entry in splits.values():
        entry["classes"] = {c: entry["classes"].get(c, 0) for c in ordered}
    class_counts = {c: overall.get(c, 0) for c in ordered}
    n = max(len(dataset) - len(skip), 1)
    balance = {c: round(v / n, 6) for c, v in class_counts.items()}
    real = [class_counts[c] for c in dataset.class_names]
    ratio = round(max(real) / min(real), 4) if real and min(real) > 0 else None
    return splits, class_counts, balance, ratio


def _split_order(name: str) -> tuple[int, str]:
    order = {"train": 0, "training": 0, "val": 1, "validation": 1, "test": 2, "testing": 2}
    return (order.get(name.lower(), 3), name)


# -- shapes and spacings ----------------------------------------------------------------------


def _raw_array_shapes(dataset: Dataset) -> Counter | None:
    """Every sample's shape from in-memory arrays (MedMNIST's ``raw_arrays(split)``), when offered."""
    raw = getattr(dataset, "raw_arrays", None)
    if raw is None:
        return None
    shapes: Counter = Counter()
    try:
        for split in sorted({r.split for r in dataset.records}, key=lambda s: _split_order(s or "")):
            arrays = raw(split)
            images = arrays[0] if isinstance(arrays, tuple) else arrays
            if isinstance(images, dict):
                images = images["images"]
            n, spatial = images.shape[0], tuple(int(s) for s in images.shape[1:])
            if len(spatial) == dataset.dims + 1:  # channels last (RGB)
                shape = (spatial[-1], *spatial[:-1])
            else:
                shape = (1, *spatial)
            shapes[shape] += int(n)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return shapes if sum(shapes.values()) == len(dataset) else None


def _shape_summary(shapes: Counter, source: str) -> dict[str, Any]:
    n = sum(shapes.values())
    summary: dict[str, Any] = {
        "from": source,
        "n": n,
        "n_distinct": len(shapes),
        "distinct": [{"shape": list(s), "count": c} for s, c in shapes.most_common(MAX_DISTINCT)],
        "min": None,
        "median": None,
        "max": None,
    }
    keys = list(shapes)
    if keys and len({len(s) for s in keys}) == 1:
        arr = np.repeat(np.array([s[1:] for s in keys]), [shapes[s] for s in keys], axis=0)
        summary["min"] = arr.min(axis=0).tolist()
        summary["median"] = [float(v) for v in np.median(arr, axis=0)]
        summary["max"] = arr.max(axis=0).tolist()
    return summary


def _channel_counts(shapes: Counter) -> Counter:
    channels: Counter = Counter()
    for s, c in shapes.items():
        channels[s[0]] += c
    return channels


def _spacing_summary(spacings: Counter) -> dict[str, Any] | None:
    if not spacings:
        return None
    summary: dict[str, Any] = {
        "n": sum(spacings.values()),
        "n_distinct": len(spacings),
        "distinct": [{"spacing": list(s), "count": c} for s, c in spacings.most_common(MAX_DISTINCT)],
        "median": None,
    }
    if len({len(s) for s in spacings}) == 1:
        arr = np.repeat(np.array(list(spacings)), list(spacings.values()), axis=0)
        summary["median"] = [round(float(v), 4) for v in np.median(arr, axis=0)]
    return summary


# -- intensities ------------------------------------------------------------------------------


def _raw_stats(dataset: Dataset, indices: np.ndarray, stats: "_PixelStats", bar) -> bool:
    """Intensity statistics straight from ``raw_arrays`` (MedMNIST), in batches.

    Used only when the raw values equal what ``load`` returns (checked on the first sample);
    returns False (nothing added) otherwise.
    """
    by_split: dict[str, list[int]] = {}
    for i in indices:
        record = dataset.records[int(i)]
        position = record.extra.get("index") if isinstance(record.extra, dict) else None
        if position is None:
            return False
        by_split.setdefault(record.split, []).append(int(position))
    if not by_split:
        return False
    first = dataset.records[int(indices[0])]
    raw_first = np.asarray(dataset.raw_arrays(first.split)[0][first.extra["index"]], dtype=np.float32)
    loaded = dataset.load(int(indices[0])).image
    if raw_first.size != loaded.size or not np.array_equal(np.sort(raw_first.ravel()), np.sort(loaded.ravel())):
        return False
    for split, positions in by_split.items():
        images = dataset.raw_arrays(split)[0]
        for start in range(0, len(positions), 256):
            chunk = positions[start : start + 256]
            batch = np.asarray(images[np.array(chunk)], dtype=np.float32)
            stats.add(batch, n_samples=len(chunk))
            bar.update(len(chunk))
    return True


class _PixelStats:
    """Exact min/max/mean/std and subsampled percentiles over the pixels of the samples read."""

    def __init__(self, expected_samples: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.per_sample = max(64, _PERCENTILE_PIXELS // max(expected_samples, 1))
        self.n_samples = 0
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = np.inf
        self.hi = -np.inf
        self.kept: list[np.ndarray] = []

    def add(self, image: np.ndarray, n_samples: int = 1) -> None:
        """Add the pixels of one image (or of a batch of ``n_samples`` images)."""
        flat = np.asarray(image, dtype=np.float32).ravel()
        self.n_samples += n_samples
        if not np.isfinite(flat.sum(dtype=np.float64)):
            flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return
        # Chan et al.'s parallel update of count, mean and sum of squared deviations (float64).
        mean = float(flat.sum(dtype=np.float64)) / flat.size
        centered = flat - np.float32(mean)
        m2 = _sum_of_squares(centered)
        total = self.count + flat.size
        delta = mean - self.mean
        self.mean += delta * flat.size / total
        self.m2 += m2 + delta * delta * self.count * flat.size / total
        self.count = total
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        keep = self.per_sample * n_samples
        if flat.size > keep:  # with replacement: cheap, and unbiased for percentiles
            flat = flat[self.rng.integers(0, flat.size, size=keep)]
        self.kept.append(flat.copy())

    def summary(self, *, of: int, seed: int) -> dict[str, Any] | None:
        if self.count == 0:
            return None
        mean = self.mean
        var = self.m2 / self.count
        pixels = np.concatenate(self.kept)
        values = np.percentile(pixels, PERCENTILES)
        return {
            "sampled": self.n_samples < of,
            "n_samples": self.n_samples,
            "of": of,
            "seed": seed,
            "min": _r(self.lo),
            "max": _r(self.hi),
            "mean": _r(mean),
            "std": _r(var**0.5),
            "percentiles": {_pkey(p): _r(v) for p, v in zip(PERCENTILES, values)},
        }


def _sum_of_squares(x: np.ndarray, block: int = 65536) -> float:
    """Sum of squares of a float32 vector: BLAS dot per block (fast), accumulated in float64."""
    return float(sum(float(np.dot(x[i : i + block], x[i : i + block])) for i in range(0, x.size, block)))


def _r(v: float) -> float:
    return float(f"{float(v):.6g}")


def _pkey(p: float) -> str:
    return f"{p:g}"


# -- listing and problems ---------------------------------------------------------------------


def _listing_entry(record, sample: Sample) -> dict[str, Any]:
    description = None
    for source in (sample.meta, record.extra):
        for key in _SERIES_KEYS:
            if source and source.get(key):
                description = str(source[key])
                break
        if description:
            break
    label = sample.label
    return {
        "id": sample.id,
        "split": record.split,
        "label": list(label) if isinstance(label, tuple) else label,
        "modality": sample.modality,
        "shape": [int(s) for s in sample.image.shape],
        "spacing": None if sample.spacing is None else [round(float(s), 4) for s in sample.spacing],
        "series_description": description,
        "origin": sample.origin,
    }


def _problem_dict(problem: Problem) -> dict[str, str]:
    return {"path": str(problem.path), "problem": str(problem.problem)}


# -- rendering --------------------------------------------------------------------------------


def render_fingerprint(fp: dict[str, Any], console) -> None:
    """Print a fingerprint as rich tables: overview, counts, shapes/spacing, intensities, problems."""
    from rich.table import Table

    title = f"[bold]{fp['name']}[/bold]  ({fp['source']})"
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="dim")
    overview.add_column()
    overview.add_row("task", f"{fp['task']}, {fp['dims']}D")
    overview.add_row("modality", str(fp.get("modality") or "unknown"))
    overview.add_row("samples", f"{fp['n_samples']} ({fp['n_patients']} patients)")
    if fp.get("imbalance_ratio") is not None:
        overview.add_row("imbalance", f"max/min = {fp['imbalance_ratio']:.2f}")
    console.print(title)
    console.print(overview)

    splits = fp["splits"]
    counts = Table(title="Counts per split and class", title_justify="left")
    counts.add_column("class")
    for split in splits:
        counts.add_column(split, justify="right")
    counts.add_column("total", justify="right")
    if fp.get("class_counts"):
        counts.add_column("fraction", justify="right")
        for name, total in fp["class_counts"].items():
            row = [str(splits[s]["classes"].get(name, 0)) for s in splits]
            counts.add_row(name, *row, str(total), f"{fp['class_balance'][name]:.1%}")
    counts.add_row(
        "[bold]all[/bold]",
        *[str(splits[s]["n"]) for s in splits],
        str(fp["n_samples"]),
        *([""] if fp.get("class_counts") else []),
    )
    console.print(counts)

    geometry = Table(title=f"Geometry ({_from_text(fp['shapes'])})", title_justify="left")
    geometry.add_column("shape (C, ...)")
    geometry.add_column("count", justify="right")
    for entry in fp["shapes"]["distinct"][:8]:
        geometry.add_row(" x ".join(map(str, entry["shape"])), str(entry["count"]))
    if fp["shapes"]["n_distinct"] > 8:
        s = fp["shapes"]
        geometry.add_row(
            f"... {s['n_distinct'] - 8} more (spatial min {s['min']}, median {s['median']}, max {s['max']})", ""
        )
    console.print(geometry)
    if fp.get("spacings"):
        sp = fp["spacings"]
        console.print(f"spacing (mm): median {sp['median']}, {sp['n_distinct']} distinct", highlight=False)

    it = fp.get("intensity")
    if it:
        table = Table(
            title=f"Intensities ({'sample of ' if it['sampled'] else 'all '}{it['n_samples']} of {it['of']} samples)",
            title_justify="left",
        )
        for key in ("min", "p1", "p50", "p99", "max", "mean", "std"):
            table.add_column(key, justify="right")
        p = it["percentiles"]
        table.add_row(*(f"{v:.4g}" for v in (it["min"], p["1"], p["50"], p["99"], it["max"], it["mean"], it["std"])))
        console.print(table)
    if fp.get("masks"):
        render_masks(fp["masks"], console)
    if fp.get("attributes"):
        render_attributes(fp["attributes"], console)

    if fp.get("samples"):
        listing = Table(title="Samples", title_justify="left")
        listing.add_column("series / id", overflow="fold")
        listing.add_column("modality", no_wrap=True)
        listing.add_column("shape (C, ...)", no_wrap=True)
        listing.add_column("spacing (mm)", no_wrap=True)
        for s in fp["samples"]:
            spacing = "" if s["spacing"] is None else " x ".join(f"{v:g}" for v in s["spacing"])
            name = s["series_description"] or s["id"]
            listing.add_row(name, s["modality"] or "", "x".join(map(str, s["shape"])), spacing)
        console.print(listing)

    if fp["problems"]:
        console.print(f"[yellow]{len(fp['problems'])} problem(s):[/yellow]")
        for p in fp["problems"]:
            console.print(f"  {p['path']}: {p['problem']}", markup=False, highlight=False)


def render_attributes(attributes: dict[str, Any], console) -> None:
    """The attributes' distribution: numeric min / median / max or the counts of each value, and missing."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Attributes (subgroups: `medlens evaluate RUN --by NAME`)", title_justify="left")
    for col in ("attribute", "distribution", "missing"):
        table.add_column(col, justify="right" if col == "missing" else "left", overflow="fold")
    for name, entry in attributes.items():
        if "numeric" in entry:
            n = entry["numeric"]
            text = f"min {n['min']:g}, median {n['median']:g}, max {n['max']:g}"
        else:
            text = ", ".join(f"{value} {count}" for value, count in entry["counts"].items())
        table.add_row(Text(name), Text(text), str(entry["n_missing"]))  # values as written, not markup
    console.print(table)


def _from_text(shapes: dict[str, Any]) -> str:
    return "all samples" if shapes["from"] == "all" else f"sample of {shapes['n']}"
