"""External validation of a segmentation run (``medlens evaluate RUN --on SOURCE`` on a segmentation run).

Every model bundle of the run (:meth:`medlens.inference.bundle.Bundle.load`) segments every case of
SOURCE — all of its splits — on the one inference path (:meth:`Bundle.preprocess`, then
:meth:`Bundle.segment`, as training's per-case outputs and ``medlens predict`` do); nothing is
refitted. The external mask is put into the model's classes by name (background first;
``--class-map`` maps other names, see :func:`medlens.study.external.match_classes`) and scored with
:func:`medlens.evaluation.segmentation.case_rows` at the image's native resolution (Dice, HD95,
NSD; two-class sources with a field of view ``Sample.meta["fov"]`` also F1, sensitivity,
specificity, accuracy and AUC inside it, AUC from the foreground probability).

``scale`` (``--scale FACTOR``): each image is resized by FACTOR (all spatial axes, linear,
anti-aliased when shrinking; :func:`skimage.transform.resize`) before preprocessing, and the class
probabilities are resized back to the native size (linear) before the argmax — for a source
whose camera resolution or field of view differs from the training source's (networks and
filter banks work in pixels).

The internal side is recomputed from the run's stored test predictions
(:func:`medlens.study.evaluate_segmentation.model_case_rows`) and summarized with the same
:func:`medlens.evaluation.segmentation.summarize`, seed and resamples, so it equals the internal
evaluation. ``difference`` is external minus internal of the mean over cases, its percentile
interval from independent resamples of the two sets of cases (:func:`scipy.stats.bootstrap`,
``paired=False``).

Entry of ``comparison.json``'s ``external[NAME]`` (the keys :mod:`medlens.study.external` writes
for classification where they make sense)::

  {"task": "segmentation", "source", "name", "created", "n_images", "splits", "classes",
   "class_map", "scale", "metrics", "distance_unit", "nsd_tolerance", "field_of_view",
   "ci": {...},
   "models": {MODEL: {"internal_split", "n": {"internal", "external"},
              "by_class": {class: {metric: {"internal": CI, "external": CI, "difference": CI}}},
              "mean_over_classes": {metric: {...}} or None (several foreground classes only),
              "cases_file", "warnings"}}}

Per model, ``models/MODEL/external/NAME/segmentation_cases.csv`` holds the external per-case rows
(with the case's source split); the run's internal files are never touched.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation import segmentation as S
from medlens.runs import RunDir, atomic_write_bytes, read_json

Log = Callable[[str], None]


def segmentation_external(
    run: RunDir,
    order: list[str],
    comparison: dict[str, Any],
    dataset: Any,
    name: str,
    classes: dict[str, str],
    *,
    scale: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    log: Log | None = None,
) -> dict[str, Any]:
    """The ``external[name]`` entry of segmentation run ``run`` on ``dataset`` (files written and recorded).

    ``classes``: {external class: model class}, for every name of :func:`external_class_names`.
    """
    from medlens.data.sources import open_source
    from medlens.inference.bundle import Bundle
    from medlens.manifest import record_files
    from medlens.study import evaluate_segmentation as ES

    say = log or (lambda msg: None)
    internal = comparison.get("segmentation") or {}
    if not internal.get("models"):
        raise MedlensError("comparison.json has no segmentation results: rerun `medlens evaluate RUN`", run.comparison)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise MedlensError(f"--scale must be a positive number, not {scale}")
    infos = {m: read_json(run.model(m).info) for m in order}
    class_names = list(infos[order[0]]["class_names"])
    external_names = external_class_names(dataset)
    if classes[external_names[0]] != class_names[0]:
        raise MedlensError(
            f"the external background '{external_names[0]}' maps to '{classes[external_names[0]]}', "
            f"not to the model's background '{class_names[0]}'"
        )
    lookup = np.array([class_names.index(classes[c]) for c in external_names], dtype=np.uint8)
    split, tolerance = str(internal.get("split") or "test"), float(internal.get("nsd_tolerance") or S.NSD_TOLERANCE_MM)

    first = infos[order[0]]
    truths = ES._Truths(open_source(str(first.get("source")), seed=int(first.get("seed") or 0)))
    ids = [r.id for r in dataset.records]
    splits = dict(sorted(Counter(r.split or "unsplit" for r in dataset.records).items()))
    say(f"external source {name}: all {len(ids)} cases ({', '.join(f'{k} {v}' for k, v in splits.items())})")

    tables, units, fov_seen = {}, set(), False
    inside = {m: ES.model_case_rows(run.model(m), split, truths, class_names, tolerance) for m in order}
    for model in order:
        bundle = Bundle.load(run.root, model)
        say(f"external segmentation: {model} ({len(ids)} cases{'' if scale is None else f', scale {scale:g}'})")
        rows = []
        for i, case_id in enumerate(ids):
            sample = dataset.load(i)
            if sample.mask is None:
                raise MedlensError(f"the external case '{case_id}' has no mask", dataset.uri)
            probs = segment_scaled(bundle, sample.image, scale, origin=str(case_id))
            fov = sample.meta.get("fov")
            fov_seen |= fov is not None
            units.add(S.distance_unit(sample.spacing))
            try:
                case = S.case_rows(
                    case_id,
                    lookup[np.asarray(sample.mask, dtype=np.int64)],
                    probs.argmax(axis=0).astype(np.uint8),
                    class_names,
                    spacing=sample.spacing,
                    fov=None if fov is None else np.asarray(fov, dtype=bool),
                    foreground=probs[1] if len(class_names) == 2 else None,
                    tolerance_mm=tolerance,
                )
            except (ValueError, IndexError) as e:  # shape, or a mask value beyond the source's classes
                raise MedlensError(f"external case '{case_id}': {e}", dataset.uri) from None
            split_of = dataset.records[i].split or ""
            rows += [{**r, "source_split": split_of} for r in case]
        tables[model] = rows

    metric_names = S.metrics_present([r for t in (*tables.values(), *inside.values()) for r in t])
    models = {}
    for model in order:
        path = run.model(model).external_segmentation_cases(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _csv(tables[model]))
        record_files(run.root, [path], "evaluate")  # at once: an unlisted file makes the bundle refuse to load
        models[model] = {
            "internal_split": split,
            "n": {"internal": len({r["id"] for r in inside[model]}), "external": len(ids)},
            **side_by_side(inside[model], tables[model], class_names, metric_names, n_resamples, seed),
            "cases_file": path.relative_to(run.root).as_posix(),
            "warnings": _absent_classes(tables[model]),
        }
    return {
        "task": "segmentation",
        "source": dataset.uri,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_images": len(ids),
        "splits": splits,
        "classes": classes,
        "scale": scale,
        "metrics": metric_names,
        "distance_unit": "px" if "px" in units else "mm",
        "nsd_tolerance": tolerance,
        "field_of_view": fov_seen,
        "ci": {
            "method": "percentile bootstrap over cases",
            "level": 0.95,
            "n_resamples": n_resamples,
            "seed": seed,
            "difference": "external minus internal mean; independent resamples of the two sets of cases",
        },
        "models": models,
    }


def external_class_names(dataset: Any) -> list[str]:
    """The source's class names, background first; for a source that names none (a CSV manifest's
    masks) "background", "1", ... as training names them (:func:`medlens.training.segmentation.class_names`)."""
    from medlens.training.segmentation import class_names

    if dataset.task.value != "segmentation":
        raise MedlensError(
            f"the run segments; the external source's task is {dataset.task.value}: it needs masks", dataset.uri
        )
    if dataset.class_names:
        return list(dataset.class_names)
    maxima = []  # each mask's largest label is all that function reads
    for i, record in enumerate(dataset.records):
        mask = dataset.load(i).mask
        if mask is None:
            raise MedlensError(f"the external case '{record.id}' has no mask", dataset.uri)
        maxima.append(np.asarray(mask).max(initial=0, keepdims=True))
    return class_names(dataset, maxima)


def segment_scaled(bundle: Any, image: np.ndarray, scale: float | None, *, origin: str = "input") -> np.ndarray:
    """Class probabilities (K, *spatial) at the image's native size; with ``scale``, the image is
    resized by it before the model sees it and the probabilities are resized back (linear)."""
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    native = image.shape[1:]
    if scale is None or scale == 1:
        return bundle.segment(bundle.preprocess(image, name=origin))
    shape = tuple(max(1, round(s * scale)) for s in native)
    scaled = resize(image, (image.shape[0], *shape), order=1, anti_aliasing=scale < 1, preserve_range=True)
    probs = bundle.segment(bundle.preprocess(scaled.astype(np.float32), name=origin))
    back = resize(probs, (probs.shape[0], *native), order=1, anti_aliasing=False, preserve_range=True)
    return back.astype(np.float32)


def side_by_side(
    internal: list[dict[str, Any]],
    external: list[dict[str, Any]],
    class_names: list[str],
    metrics: list[str],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``by_class`` and ``mean_over_classes``: per metric the internal and external means with their
    intervals (:func:`medlens.evaluation.segmentation.summarize`) and their difference."""
    kw = {"n_resamples": n_resamples, "seed": seed}
    a, b = S.summarize(internal, class_names, metrics, **kw), S.summarize(external, class_names, metrics, **kw)

    def cells(ins: dict, outs: dict, values: Callable[[list, str], list[float]]) -> dict[str, Any]:
        return {
            m: {
                "internal": ins[m],
                "external": outs[m],
                "difference": mean_difference(values(external, m), values(internal, m), n_resamples, seed),
            }
            for m in ins
        }

    by_class = {
        c: cells(a["by_class"][c], b["by_class"][c], lambda rows, m, c=c: [r[m] for r in rows if r["class"] == c])
        for c in class_names[1:]
    }
    over = None
    if a["mean_over_classes"] is not None:
        over = cells(
            a["mean_over_classes"], b["mean_over_classes"], lambda rows, m: list(S.case_means(rows, m).values())
        )
    return {"by_class": by_class, "mean_over_classes": over}


def mean_difference(a: list[float], b: list[float], n_resamples: int, seed: int) -> dict[str, Any]:
    """mean(a) - mean(b) over the finite values, with a percentile interval from independent
    resamples of a and b (:func:`scipy.stats.bootstrap`, ``paired=False``)."""
    from scipy import stats

    x, y = (np.asarray(v, dtype=np.float64) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    out: dict[str, Any] = {"value": None, "low": None, "high": None}
    if not (x.size and y.size):
        return out
    out["value"] = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return out
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # every resample gives the same difference
        out.update(low=out["value"], high=out["value"])
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(
            (x, y),
            lambda p, q, axis: np.mean(p, axis=axis) - np.mean(q, axis=axis),
            paired=False,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
    out.update(low=float(ci.low), high=float(ci.high))
    return out


def _absent_classes(rows: list[dict[str, Any]]) -> list[str]:
    empty = [
        c
        for c in dict.fromkeys(r["class"] for r in rows)
        if not any(r["truth_voxels"] for r in rows if r["class"] == c)
    ]
    if not empty:
        return []
    return [f"no external case holds class {', '.join(empty)}: its Dice only counts empty predictions"]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """The external per-case table: the internal table's columns after the case's source split."""
    from medlens.study.evaluate_segmentation import _cell

    columns = ["id", "source_split", *S.CASE_COLUMNS[1:]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r[c]) for c in columns])
    return buf.getvalue().encode()
