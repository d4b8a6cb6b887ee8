"""Report figures: matplotlib (Agg canvas, no global backend state) drawn from comparison.json data.

Every function returns PNG bytes; :func:`data_uri` turns them into an ``<img src>`` value so the
report stays one self-contained file. Figures share one restrained style (:data:`STYLE`) and one
colour per model (:func:`model_colors`), so a model has the same colour in every panel.
"""

from __future__ import annotations

import base64
import io
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

# Colour-blind safe (Okabe-Ito), muted first.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C6D31", "#555555")
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888888",
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "savefig.facecolor": "white",
}
DPI = 110


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of an image, for an ``<img src>`` that needs no other file."""
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def model_colors(names: Sequence[str]) -> dict[str, str]:
    """One stable colour per model, in display order."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


@contextmanager
def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw) -> Iterator[tuple[Any, Any]]:
    """A matplotlib Figure on its own Agg canvas, drawn inside the report style."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
        yield fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def via_file(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> bytes:
    """PNG bytes from a plotting function that writes to a path (e.g. ``plot_reliability``)."""
    import matplotlib

    with tempfile.TemporaryDirectory() as tmp, matplotlib.rc_context(STYLE):
        path = plot(*args, Path(tmp) / "figure.png", **kwargs)
        return Path(path).read_bytes()


# -- discrimination ------------------------------------------------------------------------------
def roc_pr_overlay(models: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str]) -> bytes:
    """ROC and precision-recall curves of every model (binary: side by side; else one column per class).

    ``models``: {name: comparison MODEL}. Binary tasks have one class (the positive one);
    multi-class tasks one-vs-rest per class, at most four classes drawn.
    """
    classes = _curve_classes(models)[:4]
    k = len(classes)
    shape = (1, 2) if k == 1 else (2, k)  # binary: side by side; else ROC row over PR row
    with _figure(3.4 * shape[1] + 0.4, 3.3 * shape[0], *shape) as (fig, axes):
        for col, cls in enumerate(classes):
            roc_ax, pr_ax = (axes[0][0], axes[0][1]) if k == 1 else (axes[0][col], axes[1][col])
            roc_ax.plot([0, 1], [0, 1], ls=":", color="#999999", lw=1)
            prevalence = None
            for name, entry in models.items():
                roc = ((entry.get("curves") or {}).get("roc") or {}).get(cls) or {}
                pr = ((entry.get("curves") or {}).get("pr") or {}).get(cls) or {}
                if roc.get("fpr"):
                    roc_ax.plot(
                        roc["fpr"], roc["tpr"], color=colors[name], lw=1.6, label=f"{name}  AUC {_fmt(roc.get('auc'))}"
                    )
                if pr.get("recall"):
                    pr_ax.plot(
                        pr["recall"],
                        pr["precision"],
                        color=colors[name],
                        lw=1.6,
                        label=f"{name}  AP {_fmt(pr.get('ap'))}",
                    )
                    prevalence = pr.get("prevalence", prevalence)
            if prevalence is not None:
                pr_ax.axhline(prevalence, ls=":", color="#999999", lw=1, label=f"chance ({prevalence:.2f})")
            suffix = f": {cls}" if k > 1 else f" ({cls})"
            roc_ax.set(
                xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity", ylabel="sensitivity", title=f"ROC{suffix}"
            )
            pr_ax.set(
                xlim=(0, 1),
                ylim=(0, 1.01),
                xlabel="sensitivity (recall)",
                ylabel="PPV (precision)",
                title=f"Precision–recall{suffix}",
            )
            roc_ax.legend(loc="lower right")
            pr_ax.legend(loc="lower left")
            for ax in (roc_ax, pr_ax):
                ax.set_aspect("equal")
        return _png(fig)


def _curve_classes(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    seen: list[str] = []
    for entry in models.values():
        for cls in (entry.get("curves") or {}).get("roc") or {}:
            if cls not in seen:
                seen.append(cls)
    return seen


def confusion_grid(models: Mapping[str, Mapping[str, Any]]) -> bytes:
    """One confusion matrix per model (rows: true class, columns: predicted), counts and row %."""
    items = [(n, e["confusion"]) for n, e in models.items() if (e.get("confusion") or {}).get("matrix")]
    if not items:
        raise ValueError("no confusion matrix in comparison.json (multi-label tasks have per-label tables)")
    k = len(items[0][1]["labels"])
    cols = min(len(items), 3)
    rows = int(np.ceil(len(items) / cols))
    side = 2.2 + 0.45 * k
    with _figure(side * cols + 0.4, side * rows, rows, cols) as (fig, axes):
        for ax in axes.flat[len(items) :]:
            ax.set_visible(False)
        for ax, (name, conf) in zip(axes.flat, items):
            m = np.asarray(conf["matrix"], dtype=float)
            share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            ax.grid(False)
            labels = conf["labels"]
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{int(m[i, j])}\n{share[i, j]:.0%}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.6 else "#222222",
                    )
            ax.set_xticks(range(len(labels)), labels, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
            ax.set_yticks(range(len(labels)), labels)
            ax.set(xlabel="predicted", ylabel="true", title=name)
            for spine in ax.spines.values():
                spine.set_visible(False)
        return _png(fig)


# -- calibration and selective prediction ------------------------------------------------------
def reliability_pair(entry: Mapping[str, Any], name: str) -> bytes:
    """Reliability diagram of one model before and after temperature scaling."""
    from medlens.evaluation.calibration import plot_reliability

    rel = entry.get("reliability") or {}
    if not rel.get("before") or not rel.get("after"):
        raise ValueError(f"no reliability curves for {name}")
    t = entry.get("temperature")
    curves = {"as trained": rel["before"], f"after temperature scaling (T = {_fmt(t, 2)})": rel["after"]}
    return via_file(plot_reliability, curves, title=f"{name}: calibration")


def risk_coverage_overlay(models: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Risk-coverage of every model, for the uncertainty score its abstention rule uses."""
    from medlens.evaluation.selective import plot_risk_coverage

    curves = {}
    for name, entry in models.items():
        rc = entry.get("risk_coverage") or {}
        method = (entry.get("abstention") or {}).get("method") or next(iter(rc), None)
        if method in rc and rc[method].get("coverage"):
            curves[f"{name} ({method.replace('_', ' ')})"] = rc[method]
    if not curves:
        raise ValueError("no risk-coverage curves in comparison.json")
    return via_file(plot_risk_coverage, curves, title="Error rate when the most uncertain cases are referred")


# -- training ----------------------------------------------------------------------------------
def training_curves(models: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str]) -> bytes:
    """Deep models: loss (train solid, validation dashed) and validation AUC per epoch.

    Classical models: validation score of each hyper-parameter setting tried (the chosen one dark).
    """
    deep = {
        n: e["training"]["columns"]
        for n, e in models.items()
        if (e.get("training") or {}).get("kind") == "epochs" and "epoch" in e["training"]["columns"]
    }
    grid = {n: e["training"]["columns"] for n, e in models.items() if (e.get("training") or {}).get("kind") == "grid"}
    panels = (2 if deep else 0) + len(grid)
    if not panels:
        raise ValueError("no training_log.csv was recorded")
    cols = min(panels, 3)
    rows = int(np.ceil(panels / cols))
    with _figure(3.6 * cols, 2.9 * rows, rows, cols) as (fig, axes):
        flat = list(axes.flat)
        for ax in flat[panels:]:
            ax.set_visible(False)
        k = 0
        if deep:
            loss_ax, auc_ax = flat[0], flat[1]
            for name, c in deep.items():
                epochs = _floats(c["epoch"])
                for col, ls, label in (("train_loss", "-", "train"), ("val_loss", "--", "validation")):
                    if col in c:
                        loss_ax.plot(
                            epochs + 1, _floats(c[col]), ls=ls, marker=".", color=colors[name], label=f"{name} {label}"
                        )
                if "val_auc" in c:
                    auc_ax.plot(epochs + 1, _floats(c["val_auc"]), marker=".", color=colors[name], label=name)
            from matplotlib.ticker import MaxNLocator

            for ax in (loss_ax, auc_ax):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.ticklabel_format(axis="y", useOffset=False)
            loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (deep models)")
            auc_ax.set(xlabel="epoch", ylabel="validation AUC", title="Validation AUC (deep models)")
            loss_ax.legend()
            auc_ax.legend()
            k = 2
        for name, c in grid.items():
            ax = flat[k]
            k += 1
            score_col = next((col for col in c if col.startswith("val_")), None)
            if score_col is None:
                ax.set_visible(False)
                continue
            scores = _floats(c[score_col])
            best = _floats(c.get("best", [0] * len(scores)))
            labels = [str(p) for p in c.get("params", range(len(scores)))]
            bars = ax.barh(range(len(scores)), scores, color=colors[name], alpha=0.35)
            for bar, b in zip(bars, best):
                if b == 1:
                    bar.set_alpha(1.0)
            ax.set_yticks(range(len(scores)), [_short(lbl) for lbl in labels], fontsize=7)
            ax.invert_yaxis()
            finite = scores[np.isfinite(scores)]
            if finite.size:
                ax.set_xlim(max(0.0, float(finite.min()) - 0.05), min(1.0, float(finite.max()) + 0.02))
            ax.set(xlabel=score_col.replace("_", " "), title=f"{name}: settings tried")
        return _png(fig)


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None or isinstance(v, str) else float(v) for v in values], dtype=float)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- data --------------------------------------------------------------------------------------
def class_balance(fingerprint: Mapping[str, Any]) -> bytes:
    """Horizontal bars of cases per class over the whole source."""
    counts = fingerprint.get("class_counts") or {}
    if not counts:
        raise ValueError("the fingerprint has no class counts")
    names = list(counts)
    with _figure(5.0, 0.45 * len(names) + 0.9) as (fig, axes):
        ax = axes[0][0]
        values = [counts[n] for n in names]
        ax.barh(range(len(names)), values, color=PALETTE[0], alpha=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v}", va="center", fontsize=8)
        ax.set(xlabel="cases", title="Cases per class")
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, max(values) * 1.15 if values and max(values) > 0 else 1)
        return _png(fig)


# -- segmentation ------------------------------------------------------------------------------
def segmentation_boxplots(
    values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    colors: Mapping[str, str],
    labels: Mapping[str, str],
) -> bytes:
    """Box plots of per-case values: one row per metric, one column per class, one box per model.

    ``values``: {metric: {class: {model: per-case values}}} (NaN values are left out);
    ``labels``: the axis label of each metric.
    """
    metrics = [m for m in values if any(values[m].values())]
    if not metrics:
        raise ValueError("no per-case segmentation values")
    classes = list(values[metrics[0]])
    rows, cols = len(metrics), len(classes)
    with _figure(0.4 + 3.4 * cols, 2.8 * rows, rows, cols) as (fig, axes):
        for i, metric in enumerate(metrics):
            for j, cls in enumerate(classes):
                ax = axes[i][j]
                per_model = values[metric].get(cls) or {}
                names = list(per_model)
                data = [np.asarray(per_model[n], dtype=float) for n in names]
                data = [d[np.isfinite(d)] for d in data]
                box = ax.boxplot(data, tick_labels=names, patch_artist=True, widths=0.55, showfliers=True)
                for patch, n in zip(box["boxes"], names):
                    patch.set(facecolor=colors[n], alpha=0.45, edgecolor=colors[n])
                for median in box["medians"]:
                    median.set(color="#222222")
                ax.set(ylabel=labels.get(metric, metric), title=cls if i == 0 else "")
                ax.grid(axis="x", visible=False)
        return _png(fig)


def segmentation_overlay(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, class_names: Sequence[str], title: str = ""
) -> bytes:
    """One case: the image with truth (solid) and prediction (dashed) contours of each class.

    ``image`` is channels first (C, *spatial); 3D shows the slice (axis 0 of the spatial axes) with
    the most truth foreground (the prediction's when the truth is empty). Three channels are shown
    in colour, otherwise the first channel in grey; each windowed to its 1st-99th percentile.
    """
    from matplotlib.lines import Line2D

    image, truth, pred = np.asarray(image, dtype=np.float32), np.asarray(truth), np.asarray(pred)
    if truth.ndim == 3:
        area = (truth > 0).sum(axis=(1, 2))
        if not area.any():
            area = (pred > 0).sum(axis=(1, 2))
        z = int(np.argmax(area)) if area.any() else truth.shape[0] // 2
        image, truth, pred = image[:, z], truth[z], pred[z]
        title = f"{title} · slice {z}"
    shown = np.moveaxis(image[:3], 0, -1) if image.shape[0] == 3 else image[0]
    low, high = np.percentile(shown, [1, 99])
    shown = np.clip((shown - low) / max(float(high - low), 1e-6), 0, 1)
    height, width = truth.shape
    scale = 4.2 / max(height, width)
    with _figure(width * scale + 0.3, height * scale + 0.6) as (fig, axes):
        ax = axes[0][0]
        ax.imshow(shown, cmap="gray", interpolation="nearest")
        handles = []
        for c in range(1, len(class_names)):
            color = PALETTE[(c + 1) % len(PALETTE)]
            for mask, style in ((truth, "solid"), (pred, "dashed")):
                if np.any(mask == c):
                    ax.contour(
                        (mask == c).astype(float), levels=[0.5], colors=[color], linewidths=1.1, linestyles=style
                    )
            handles += [
                Line2D([], [], color=color, ls="-", label=f"{class_names[c]}: truth"),
                Line2D([], [], color=color, ls="--", label=f"{class_names[c]}: prediction"),
            ]
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7)
        return _png(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


# -- subgroups -----------------------------------------------------------------------------------
FOREST_METRICS = (("auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"))


def forest_plot(column: Mapping[str, Any], colors: Mapping[str, str], title: str = "") -> bytes:
    """Forest plot of one subgroup column: a row per group and model with its 95% CI bar, a panel per
    metric; groups too small to score are rows with their n and no bar. ``column`` is a column of
    comparison.json's ``subgroups`` section (``order`` and ``models`` -> ``groups``)."""
    order = list(column["order"])
    models = [m for m in colors if m in column["models"]]
    step = 1.0 / (len(models) + 1)
    rows = len(order)
    with _figure(9.5, 0.9 + 0.34 * rows * max(1, len(models)), 1, 3, sharey=True) as (fig, axes):
        for ax, (metric, label) in zip(axes[0], FOREST_METRICS):
            for j, model in enumerate(models):
                groups = column["models"][model]["groups"]
                labelled = False
                for i, g in enumerate(order):
                    ci = (groups.get(g) or {}).get(metric)
                    y = rows - i - (j + 1) * step  # the models' rows share their group's band
                    if not ci or ci.get("value") is None:
                        continue
                    low, high = ci.get("low"), ci.get("high")
                    if low is not None and high is not None:
                        ax.plot([low, high], [y, y], color=colors[model], lw=1.6)
                    ax.plot(ci["value"], y, "o", color=colors[model], ms=4, label=None if labelled else model)
                    labelled = True
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(0, rows)
            ax.set_xlabel(label)
            ax.grid(axis="y", visible=False)
            for i in range(1, rows):
                ax.axhline(i, color="#e3e3e3", lw=0.6)
        first = column["models"][models[0]]["groups"] if models else {}
        names = []
        for g in order:
            entry = first.get(g) or {}
            small = "" if entry.get("status") == "ok" else ", too small"
            names.append(f"{_short(str(g), 20)} (n={entry.get('n', '?')}{small})")
        axes[0][0].set_yticks([rows - 1 - i + 0.5 for i in range(rows)], names)
        axes[0][0].tick_params(axis="y", length=0)
        if title:
            axes[0][0].set_title(title, loc="left")
        if len(models) > 1:
            axes[0][2].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=min(len(models), 3))
        return _png(fig)
