"""Training and inference: medlens's Lightning loop vs a plain PyTorch loop, inference speed,
and what each model family reaches on PneumoniaMNIST and AdrenalMNIST3D.

Three parts (``--parts a,b,c``), each recorded in its own section of BENCHMARKS.md:

a. **Training loop overhead.** The same network (``cnn-small`` and ``resnet18`` at 28 px), the
   same data (PneumoniaMNIST train split), the same settings as MedMNIST's reference
   experiments (Adam 1e-3, batch 128, cross-entropy, no augmentation, no class weights, no
   scheduler) and the same epochs, trained by

   * ``plain``: a hand-written PyTorch loop (``TensorDataset`` + ``DataLoader(shuffle=True)``,
     validation pass each epoch, as MedMNIST's ``train_and_eval_pytorch.py`` does);
   * ``medlens``: :func:`medlens.training.run.train` (Lightning, checkpoints, early stopping,
     CSV logger, ``progress=False``) with its defaults: precision "auto" (bf16 mixed precision
     on a CPU with AMX) and channels-last 2D networks;
   * ``medlens-fp32``: the same with ``precision="32"`` (float32 throughout, as the plain loop);
   * ``medlens+progress``: the same with the Rich progress bar (the CLI default);
   * ``medlens-lean``: ``train()`` with ``checkpoint_every_n_steps`` out of reach and
     ``deterministic=False`` (what those two settings cost);
   * ``lightning-bare``: medlens's ``ClassifierModule`` + ``ArrayDataModule`` under a bare
     ``lightning.Trainer`` (no logger, checkpoints, callbacks or progress bar): Lightning itself.

   Each contender runs in its own subprocess, so peak RSS (``ru_maxrss``) is per contender.
   Training images/s counts training batches only (validation excluded; step checkpoints
   included), "fit s" is the wall time of all epochs with validation.
b. **Inference.** Images/s at batch 256 and the median latency of one image (batch 1) for
   every registered deep model at its typical input size (random weights; speed does not
   depend on them) and for the classical ``svm`` / ``elm`` pipelines including feature
   extraction (fitted on a small PneumoniaMNIST / AdrenalMNIST3D subset).
c. **Every family on real data.** ``train()`` with medlens's defaults (AdamW, cosine, light
   augmentation, class-weighted loss) on PneumoniaMNIST (2D models + classical) and
   AdrenalMNIST3D (3D models + classical): test AUC / ACC and training time.

Before anything runs, the script measures each deep model's training speed on this machine
(``medlens.training.plan.measure_throughput``, ~2 s per model) and prints the estimated
duration of every part; when part c's estimate exceeds ``--budget-minutes``, the most expensive
deep models get fewer epochs (max-min fair share; cheap models keep theirs; the cuts are recorded).

    python benchmarks/bench_train.py                         # full: parts a, b, c (records)
    python benchmarks/bench_train.py --parts a --no-record   # one part, print only
    python benchmarks/bench_train.py --quick                 # seconds-scale check, no record
    python benchmarks/bench_train.py --quick --record --md /tmp/BENCH.md   # quick into a scratch file

The helpers at the top (argument handling, recording, timing estimates) are shared by
``bench_gan.py`` and ``bench_study.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD_CAVEAT = (
    "Measured on a machine shared with other jobs unless the load average says otherwise: "
    "compare rows within one run, not across runs."
)


# ============================================================================================
# shared helpers (also used by bench_gan.py and bench_study.py)
# ============================================================================================
def default_data() -> Path:
    return Path(os.environ.get("MEDLENS_DATA", ROOT.parent / "shared" / "data"))


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny check (a few hundred samples, 1 epoch, seconds)")
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the section(s) into BENCHMARKS.md (default: yes for full runs, no with --quick)",
    )
    parser.add_argument(
        "--md", type=Path, default=None, help="record into this file instead of BENCHMARKS.md (scratch)"
    )
    parser.add_argument("--data", type=Path, default=default_data(), help="the shared data folder (env MEDLENS_DATA)")
    parser.add_argument(
        "--out", type=Path, default=None, help="scratch folder for run directories (default runs/bench/...)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")


def should_record(args: argparse.Namespace) -> bool:
    return (not args.quick) if args.record is None else bool(args.record)


def record(args: argparse.Namespace, key: str, title: str, body: str) -> None:
    """Record a section (into ``--md`` when given), or only say that nothing was recorded."""
    if not should_record(args):
        print(f"(not recorded: section '{key}'; pass --record to write it)")
        return
    from benchmarks import _record

    if args.md is not None:
        _record.BENCHMARKS_MD = Path(args.md)
    if args.quick:
        body = "**QUICK CHECK (--quick): tiny data and epochs; not a measurement.**\n\n" + body
    _record.record_section(key, title, body)


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average at the end of the run: {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def check_data(args: argparse.Namespace, *rel: str) -> bool:
    missing = [r for r in rel if not (args.data / r).exists()]
    if missing:
        print(f"data not found under {args.data}: {', '.join(missing)} (set MEDLENS_DATA or --data)")
        return False
    return True


def probe_ips(
    model: str, *, dims: int, img_size: int, batch_size: int, channels: int = 1, outputs: int = 2, seconds: float = 1.5
) -> float:
    """Training images/s of ``model`` on this machine (a few timed forward/backward steps)."""
    import warnings

    from medlens.training.plan import measure_throughput

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure_throughput(
            model,
            in_channels=channels,
            num_outputs=outputs,
            dims=dims,
            img_size=img_size,
            batch_size=batch_size,
            seconds=seconds,
            max_steps=6,
        )


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def mean_sd(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def f3(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


def train_model(source: str | Path, model: str, out: Path, **settings: Any) -> dict[str, Any]:
    """``medlens.training.run.train`` one model; returns metrics.json plus wall time and the RunDir."""
    import warnings

    from medlens.runs import read_json
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    settings.setdefault("progress", False)
    config = TrainConfig(source=str(source), model=model, out=str(out)).updated(**settings)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(config)
    wall = time.perf_counter() - t0
    metrics = read_json(run.model(model).metrics)
    return {"metrics": metrics, "wall_s": wall, "run": run, "model_dir": run.model(model)}


def read_predictions(model_dir, split: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, labels (N,) and probabilities (N, K) from ``predictions_SPLIT.csv``."""
    import csv

    ids, labels, probs = [], [], []
    with open(model_dir.predictions(split), newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        k = sum(1 for h in header if h.startswith("prob_"))
        for row in reader:
            ids.append(row[0])
            labels.append(int(row[1]))
            probs.append([float(v) for v in row[2 : 2 + k]])
    return ids, np.asarray(labels), np.asarray(probs, dtype=np.float64)


def fair_epochs(per_epoch: dict[str, float], epochs: dict[str, int], budget_seconds: float) -> dict[str, int]:
    """Epochs per model so the total fits ``budget_seconds``, by max-min fairness: cheap models keep
    their epochs, the most expensive ones are cut to an equal share of what is left (>= 1 epoch)."""
    out = dict(epochs)
    left, todo = max(budget_seconds, 0.0), sorted(per_epoch, key=lambda k: per_epoch[k] * epochs[k])
    for n, key in enumerate(todo):
        share = left / (len(todo) - n)
        cost = per_epoch[key] * epochs[key]
        if cost > share:
            out[key] = max(1, min(epochs[key], int(share / max(per_epoch[key], 1e-9))))
        left -= per_epoch[key] * out[key]
    return out


def classical_estimate(model: str, n_train: int, dims: int) -> float:
    from medlens.study.suites import classical_seconds

    return classical_seconds(model, n_train, dims)


# ============================================================================================
# part a: training loop overhead (one subprocess per contender)
# ============================================================================================
CONTENDER_NOTES = {
    "plain": "hand-written loop (TensorDataset + DataLoader, per-sample collate)",
    "medlens": "`train()` with progress off and its defaults (precision auto: bf16 mixed on a CPU with AMX; "
    "channels-last 2D networks)",
    "medlens-fp32": 'the same in float32 (`precision="32"`)',
    "medlens+progress": "with the Rich bar (CLI default)",
    "medlens-lean": "`train()` with step checkpoints off and `deterministic=False`",
    "lightning-bare": "medlens's module and data module under a bare `lightning.Trainer` (no logger, "
    "checkpoints, callbacks, bar)",
}
CONTENDERS = tuple(CONTENDER_NOTES)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM belongs to the process's own address space;
    ru_maxrss would not do: Linux carries it over fork+exec from the (large) parent process."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one contender in this (fresh) process; returns its measurements."""
    import warnings

    warnings.simplefilter("ignore")
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    contender, model, epochs = spec["contender"], spec["model"], int(spec["epochs"])
    npz, n, seed = spec["npz"], spec.get("max_samples"), int(spec["seed"])
    rss_start = _peak_rss_mb()
    if contender == "plain":
        return {**_plain_loop(npz, model, epochs, n, seed), "rss_start_mb": rss_start, "peak_rss_mb": _peak_rss_mb()}
    if contender == "lightning-bare":
        return {
            **_bare_lightning(npz, model, epochs, n, seed),
            "rss_start_mb": rss_start,
            "peak_rss_mb": _peak_rss_mb(),
        }
    settings = dict(
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        optimizer="adam",
        weight_decay=0.0,
        scheduler="none",
        imbalance="none",
        augment="none",
        max_samples=n,
        seed=seed,
        patience=epochs + 1,
        progress=contender == "medlens+progress",
        threads=spec.get("threads"),
    )
    if contender == "medlens-lean":
        settings.update(checkpoint_every_n_steps=10**9, deterministic=False)
    if contender == "medlens-fp32":
        settings.update(precision="32")
    import lightning as L

    fit_times: list[float] = []
    original_fit = L.Trainer.fit

    def timed_fit(self, *a, **kw):  # time Trainer.fit alone (train() also predicts val/test and saves)
        t0 = time.perf_counter()
        try:
            return original_fit(self, *a, **kw)
        finally:
            fit_times.append(time.perf_counter() - t0)

    L.Trainer.fit = timed_fit
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        r = train_model(npz, model, Path(tmp) / "run", **settings)
    L.Trainer.fit = original_fit
    timing = r["metrics"]["timing"]
    return {
        "train_images_per_s": timing.get("images_per_second"),
        "train_s": timing.get("train_seconds"),
        "fit_s": sum(fit_times),
        "train_fn_s": timing.get("total_seconds"),
        "wall_s": r["wall_s"],
        "n_train": r["metrics"]["n"]["train"],
        "val_auc_last": None,
        "test_auc": r["metrics"].get("test", {}).get("auc"),
        "rss_start_mb": rss_start,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _medmnist_arrays(npz: str, split: str, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The split as float32 (N, C, H, W) scaled like MedMNIST's ToTensor + Normalize(0.5, 0.5)."""
    from medlens.data.splits import cap_ids

    with np.load(npz) as z:
        x, y = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1).astype(np.int64)
    if n:  # the same seeded subset train(max_samples=n) takes
        keep = [int(i) for i in cap_ids([str(i) for i in range(len(x))], n, seed=seed)]
        x, y = x[keep], y[keep]
    x = (x.astype(np.float32) / 255.0 - 0.5) / 0.5
    x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(x), y


def _plain_loop(npz: str, model: str, epochs: int, n: int | None, seed: int) -> dict[str, Any]:
    """MedMNIST's reference recipe as a plain PyTorch loop (train, then a validation pass, per epoch)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from medlens.models.registry import get_model

    t_all = time.perf_counter()
    xt, yt = _medmnist_arrays(npz, "train", n, seed)
    xv, yv = _medmnist_arrays(npz, "val", n, seed)
    torch.manual_seed(seed)
    net = get_model(model).build(in_channels=xt.shape[1], num_outputs=2, spatial_dims=2, img_size=28)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    train_loader = DataLoader(TensorDataset(torch.from_numpy(xt), torch.from_numpy(yt)), batch_size=128, shuffle=True)
    val_loader = DataLoader(TensorDataset(torch.from_numpy(xv), torch.from_numpy(yv)), batch_size=256)
    train_s, seen = 0.0, 0
    t_fit = time.perf_counter()
    for _ in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for x, y in train_loader:
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            seen += len(x)
        train_s += time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            scores = torch.cat([torch.softmax(net(x), 1)[:, 1] for x, _ in val_loader]).numpy()
    fit_s = time.perf_counter() - t_fit
    from sklearn.metrics import roc_auc_score

    return {
        "train_images_per_s": seen / train_s if train_s else None,
        "train_s": train_s,
        "fit_s": fit_s,
        "wall_s": time.perf_counter() - t_all,
        "n_train": len(xt),
        "val_auc_last": float(roc_auc_score(yv, scores)) if len(set(yv.tolist())) > 1 else None,
        "test_auc": _plain_test_auc(net, npz, n, seed),
    }


def _plain_test_auc(net, npz: str, n: int | None, seed: int) -> float:
    """Test AUC of the plain loop's final network (float32, eval mode)."""
    import torch
    from sklearn.metrics import roc_auc_score

    x, y = _medmnist_arrays(npz, "test", n, seed)
    net.eval()
    with torch.no_grad():
        scores = torch.cat([torch.softmax(net(b), 1)[:, 1] for b in torch.from_numpy(x).split(256)]).numpy()
    return float(roc_auc_score(y, scores))


def _bare_lightning(npz: str, model: str, epochs: int, n: int | None, seed: int) -> dict[str, Any]:
    """medlens's module and data module under a Trainer with every extra switched off."""
    import lightning as L

    from medlens.training.datamodule import ArrayDataModule
    from medlens.training.lightning_module import ClassifierModule
    from medlens.training.trainer import EpochTimer

    t_all = time.perf_counter()
    xt, yt = _medmnist_arrays(npz, "train", n, seed)
    xv, yv = _medmnist_arrays(npz, "val", n, seed)
    L.seed_everything(seed, verbose=False)
    module = ClassifierModule(
        model,
        in_channels=xt.shape[1],
        num_outputs=2,
        spatial_dims=2,
        img_size=28,
        task="binary",
        lr=1e-3,
        weight_decay=0.0,
        optimizer="adam",
        scheduler="none",
        epochs=epochs,
    )
    dm = ArrayDataModule({"train": (xt, yt), "val": (xv, yv)}, batch_size=128, seed=seed)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t_fit
    s = timer.summary()
    return {
        "train_images_per_s": s["images_per_second"],
        "train_s": s["train_seconds"],
        "fit_s": fit_s,
        "wall_s": time.perf_counter() - t_all,
        "n_train": len(xt),
        "val_auc_last": None,
    }


def run_contender(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)[:300]}"}


def part_a_plan(args, ips: dict[str, float]) -> tuple[list[dict[str, Any]], float]:
    npz = str(args.data / "medmnist" / "pneumoniamnist.npz")
    if args.quick:
        plan = [("cnn-small", 1, 256)]
    else:
        plan = [
            ("cnn-small", args.a_epochs_small, None),
            ("resnet18", args.a_epochs_resnet, args.a_resnet_samples or None),
        ]
    specs, est = [], 0.0
    for model, epochs, n in plan:
        n_train, n_val = (n or 4708), (min(n, 524) if n else 524)
        per = epochs * (n_train + 0.35 * n_val) / max(ips.get(model, 1.0), 1e-6) + 15  # + start-up
        for c in args.a_contenders.split(","):
            specs.append(
                {
                    "contender": c,
                    "model": model,
                    "epochs": epochs,
                    "max_samples": n,
                    "npz": npz,
                    "seed": 0,
                    "threads": args.threads,
                }
            )
            est += per
    return specs, est


def part_a(args, specs: list[dict[str, Any]], repeats: int) -> list[dict[str, Any]]:
    """Every contender ``repeats`` times, round-robin (so drifting load hits all alike); the
    median img/s and fit time per contender, the largest peak RSS."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for spec in specs:
            t0 = time.perf_counter()
            r = run_contender(spec)
            r.update(contender=spec["contender"], model=spec["model"], epochs=spec["epochs"])
            runs.setdefault((spec["model"], spec["contender"]), []).append(r)
            if "error" in r:
                print(f"  [{rep + 1}/{repeats}] {spec['model']:10s} {spec['contender']:18s} FAILED {r['error']}")
            else:
                print(
                    f"  [{rep + 1}/{repeats}] {spec['model']:10s} {spec['contender']:18s} {r['train_images_per_s'] or 0:8.1f} "
                    f"img/s  fit {r['fit_s']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    rows = []
    for rs in runs.values():
        good = [r for r in rs if "error" not in r]
        if not good:
            rows.append(rs[0])
            continue
        row = dict(good[0])
        for key in ("train_images_per_s", "fit_s", "wall_s"):
            row[key] = statistics.median(r[key] for r in good)
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in good)
        row["spread"] = [round(r["train_images_per_s"], 1) for r in good]
        row["test_aucs"] = [r.get("test_auc") for r in good]
        rows.append(row)
    return rows


def _aucs(row: dict[str, Any]) -> str:
    """The test AUCs of a contender's runs: one value when every run gave the same."""
    values = sorted({round(a, 6) for a in row.get("test_aucs", []) if a is not None})
    return " / ".join(f"{a:.6f}" for a in values) or "-"


def part_a_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Same network, data (PneumoniaMNIST train split; validation on its val split each epoch), settings "
        "(Adam 1e-3, batch 128, cross-entropy, no augmentation, no class weights, no scheduler) and epochs; "
        "each contender in its own process. *img/s*: training batches only; *fit s*: all epochs incl. "
        "validation (`Trainer.fit` for Lightning: with checkpoints and logging); *process wall s*: the whole "
        "contender (data loading; medlens also writes fingerprint, predictions and manifest); "
        "*vs plain*: training img/s relative to the plain loop.",
        "",
        "| model | contender | epochs | n train | train img/s (median) | runs img/s | vs plain | fit s | process wall s | peak RSS MB | test AUC |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    plain = {r["model"]: r.get("train_images_per_s") for r in rows if r["contender"] == "plain" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['contender']} | {r['epochs']} | - | failed: {r['error'][:80]} | | | | | | |"
            )
            continue
        base = plain.get(r["model"])
        rel = f"{r['train_images_per_s'] / base:.2f}x" if base and r.get("train_images_per_s") else "-"
        lines.append(
            f"| {r['model']} | {r['contender']} | {r['epochs']} | {r['n_train']} | "
            f"{r['train_images_per_s'] or 0:.1f} | {', '.join(map(str, r.get('spread', [])))} | {rel} | "
            f"{r['fit_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {_aucs(r)} |"
        )
    lines += [
        "",
        "Contenders: "
        + "; ".join(f"*{c}* {CONTENDER_NOTES[c]}" for c in CONTENDERS if c in {r["contender"] for r in rows})
        + ". Peak RSS is the whole process (Python, torch and Lightning imports included). "
        "*test AUC*: PneumoniaMNIST test split scored with each contender's final weights in float32 "
        "(medlens: its best checkpoint by validation AUC, through the bundle, so it need not match the "
        "plain loop's last-epoch weights); several values when repeats differed. bf16 and float32 runs of "
        "the same seed are not bit-identical: bf16 rounds the matmul inputs to 8 mantissa bits, which moves "
        "the optimisation path; the AUC columns show by how much.",
        "",
        LOAD_CAVEAT + " " + load_note() + ".",
    ]
    return "\n".join(lines)


# ============================================================================================
# part b: inference throughput and latency
# ============================================================================================
DEEP_TYPICAL = {  # model: (dims, img_size) at its typical size
    "cnn-small": (2, 28),
    "resnet18": (2, 28),
    "resnet50": (2, 28),
    "densenet121": (2, 32),
    "efficientnet-b0": (2, 64),
    "vit": (2, 32),
    "resnet18-3d": (3, 28),
    "cnn-2.5d": (3, 28),
    "cnn-lstm": (3, 28),
}


def _time_batches(fn, x, min_seconds: float, min_reps: int) -> float:
    """Median seconds per call of ``fn(x)`` after a warm-up."""
    fn(x)
    times, started = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - started < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def part_b(args) -> list[dict[str, Any]]:
    import warnings

    import torch

    from medlens.models.registry import all_models, get_model

    warnings.simplefilter("ignore")
    batch = 32 if args.quick else 256
    min_s, reps = (0.2, 1) if args.quick else (3.0, 3)
    lat_reps = 5 if args.quick else 50
    rows = []
    models = [s.name for s in all_models() if s.kind == "deep"]
    if args.quick:
        models = [m for m in models if m in ("cnn-small", "cnn-2.5d")]
    for name in models:
        dims, size = DEEP_TYPICAL.get(name, (get_model(name).dims[0], 28))
        torch.manual_seed(0)
        net = get_model(name).build(in_channels=1, num_outputs=2, spatial_dims=dims, img_size=size).eval()
        shape = (1, *([size] * dims))

        @torch.inference_mode()
        def fwd(x, net=net):
            return torch.softmax(net(x), 1)

        xb = torch.rand(batch, *shape)
        per_batch = _time_batches(fwd, xb, min_s, reps)
        x1 = torch.rand(1, *shape)
        fwd(x1)
        lat = sorted(_one(fwd, x1) for _ in range(lat_reps))
        row = {
            "model": name,
            "kind": "deep",
            "input": "x".join([str(size)] * dims),
            "batch": batch,
            "images_per_s": batch / per_batch,
            "latency_p50_ms": 1000 * lat[len(lat) // 2],
        }
        rows.append(row)
        print(f"  {name:16s} {row['input']:>8s}  {row['images_per_s']:9.1f} img/s  p50 {row['latency_p50_ms']:7.2f} ms")
    rows += _classical_inference(args, batch, min_s, reps, lat_reps)
    return rows


def _one(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def _classical_inference(args, batch: int, min_s: float, reps: int, lat_reps: int) -> list[dict[str, Any]]:
    from medlens.training.classical import fit_classical

    rows = []
    sets = [("pneumoniamnist.npz", "28x28")] + ([] if args.quick else [("adrenalmnist3d.npz", "28x28x28")])
    for file, label in sets:
        with np.load(args.data / "medmnist" / file) as z:
            n_fit = 200 if args.quick else 600
            x = z["train_images"][:n_fit].astype(np.float32) / 255.0
            y = z["train_labels"][:n_fit].reshape(-1)
            xv = z["val_images"][:100].astype(np.float32) / 255.0
            yv = z["val_labels"][:100].reshape(-1)
            xb = z["test_images"][:batch].astype(np.float32) / 255.0
        x, xv, xb = x[:, None], xv[:, None], xb[:, None]
        for name in ("svm", "elm"):
            est = fit_classical(name, x, y, xv, yv, task="binary", seed=0, show_progress=False).estimator
            per_batch = _time_batches(est.predict_proba, xb, min_s, reps)
            est.predict_proba(xb[:1])
            lat = sorted(_one(est.predict_proba, xb[:1]) for _ in range(lat_reps))
            row = {
                "model": name,
                "kind": "classical",
                "input": label,
                "batch": len(xb),
                "images_per_s": len(xb) / per_batch,
                "latency_p50_ms": 1000 * lat[len(lat) // 2],
            }
            rows.append(row)
            print(f"  {name:16s} {label:>8s}  {row['images_per_s']:9.1f} img/s  p50 {row['latency_p50_ms']:7.2f} ms")
    return rows


def part_b_markdown(rows: list[dict[str, Any]], threads: int) -> str:
    lines = [
        f"CPU, {threads} torch threads, float32, eval mode, `torch.inference_mode`, softmax included. "
        "Throughput: median time of a batch after a warm-up; latency: median (p50) of single-image calls. "
        "Deep models have random weights (speed does not depend on them); classical pipelines were fitted on "
        "600 training images and include feature extraction (HOG, LBP, histogram) and scaling.",
        "",
        "| model | kind | input | batch | images/s | latency p50 ms (batch 1) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['input']} | {r['batch']} | {r['images_per_s']:.1f} | "
            f"{r['latency_p50_ms']:.2f} |"
        )
    lines += ["", LOAD_CAVEAT + " " + load_note() + "."]
    return "\n".join(lines)


# ============================================================================================
# part c: every family reaches a sensible test AUC
# ============================================================================================
C_PLAN = {
    "pneumoniamnist": [
        ("svm", None),
        ("elm", None),
        ("cnn-small", 10),
        ("resnet18", 5),
        ("vit", 5),
        ("densenet121", 2),
        ("efficientnet-b0", 3),
    ],
    "adrenalmnist3d": [("svm", None), ("elm", None), ("resnet18-3d", 10), ("cnn-2.5d", 10), ("cnn-lstm", 10)],
}
C_SIZES = {"pneumoniamnist": (2, 4708, 524), "adrenalmnist3d": (3, 1188, 98)}


def part_c_plan(args, ips: dict[str, float]) -> tuple[dict[str, list[tuple[str, int | None]]], float, float]:
    """The models and (budget-fitted) epochs of part c, its estimate and the cuts {key: (planned, run)}."""
    from medlens.models.registry import get_model

    plan = {k: list(v) for k, v in C_PLAN.items() if k in args.c_datasets}
    if args.quick:
        plan = {
            k: [(m, 1 if e else None) for m, e in v if m in ("elm", "cnn-small", "cnn-2.5d")] for k, v in plan.items()
        }
    fixed, per_epoch, wanted = 0.0, {}, {}
    for ds, entries in plan.items():
        dims, n_train, n_val = C_SIZES[ds]
        if args.quick:
            n_train, n_val = min(n_train, 300), min(n_val, 300)
        for model, epochs in entries:
            if get_model(model).kind == "classical":
                fixed += 0.5 * classical_estimate(model, n_train, dims) + 10  # the table is for 64 px; 28 px is cheaper
            else:
                per_epoch[f"{ds}/{model}"] = (n_train + 0.35 * n_val) / max(ips.get(model, 1.0), 1e-6)
                wanted[f"{ds}/{model}"] = epochs
                fixed += 10
    got = wanted if args.quick else fair_epochs(per_epoch, wanted, args.budget_minutes * 60 - fixed)
    cut = {k: (wanted[k], got[k]) for k in wanted if got[k] < wanted[k]}
    plan = {ds: [(m, got.get(f"{ds}/{m}", e) if e else None) for m, e in v] for ds, v in plan.items()}
    est = fixed + sum(per_epoch[k] * got[k] for k in per_epoch)
    return plan, est, cut


def part_c(args, plan) -> list[dict[str, Any]]:
    rows = []
    out = (args.out or ROOT / "runs" / "bench") / ("train-quick" if args.quick else "train")
    for ds, entries in plan.items():
        src = args.data / "medmnist" / f"{ds}.npz"
        for model, epochs in entries:
            settings: dict[str, Any] = {"seed": 0, "threads": args.threads}
            if epochs:
                settings.update(epochs=epochs, patience=epochs)
            if args.quick:
                settings["max_samples"] = 300
            try:
                r = train_model(src, model, out / ds, **settings)
            except Exception as e:  # noqa: BLE001 - a failing model is a result
                rows.append(
                    {"dataset": ds, "model": model, "epochs": epochs, "error": f"{type(e).__name__}: {e}"[:200]}
                )
                print(f"  {ds:15s} {model:16s} FAILED {e}")
                continue
            m = r["metrics"]
            t = m.get("test", {})
            row = {
                "dataset": ds,
                "model": model,
                "epochs": epochs,
                "auc": t.get("auc"),
                "acc": t.get("acc"),
                "acc_thr": t.get("acc@threshold"),
                "fit_s": m["timing"].get("total_seconds"),
                "wall_s": r["wall_s"],
                "ips": m["timing"].get("images_per_second"),
                "n_test": m["n"].get("test"),
            }
            rows.append(row)
            print(
                f"  {ds:15s} {model:16s} ep {epochs or '-':>3}  AUC {f3(row['auc'])}  ACC {f3(row['acc'])}  "
                f"fit {row['fit_s']:.0f} s"
            )
    return rows


def part_c_markdown(rows: list[dict[str, Any]], cut: dict, budget: float) -> str:
    lines = [
        "`medlens.training.run.train` with its defaults (AdamW, cosine schedule, light augmentation, "
        "class-weighted loss, best epoch by validation AUC; classical: HOG+LBP+histogram features, grid search "
        "on validation) on the official MedMNIST splits, seed 0, native 28 px / 28³. 2D models on "
        "PneumoniaMNIST, 3D models on AdrenalMNIST3D, classical on both. Test AUC and ACC (MedMNIST's 0.5 "
        "rule); *ACC@thr*: threshold chosen on validation. *fit s*: training incl. validation and "
        "predictions (classical: features + grid search).",
        "",
        "| dataset | model | epochs | test AUC | test ACC | ACC@thr | fit s | train img/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['dataset']} | {r['model']} | {r['epochs'] or '-'} | failed: {r['error'][:100]} | | | | |"
            )
            continue
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['epochs'] or '-'} | {f3(r['auc'])} | {f3(r['acc'])} | "
            f"{f3(r['acc_thr'])} | {r['fit_s']:.0f} | {r['ips'] if r['ips'] is not None else '-'} |"
        )
    if cut:
        lines += [
            "",
            f"Epochs cut to fit --budget-minutes {budget:g} (planned -> run): "
            + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in cut.items())
            + ".",
        ]
    lines += [
        "",
        "MedMNIST v2 reference (test AUC/ACC): PneumoniaMNIST ResNet-18 (28) .944/.854; "
        "AdrenalMNIST3D ResNet-18+3D (28) .827/.721, best published ResNet about .84/.80.",
        "",
        LOAD_CAVEAT + " " + load_note() + ".",
    ]
    return "\n".join(lines)


# ============================================================================================
def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_worker":
        print("RESULT " + json.dumps(_worker(json.loads(sys.argv[2]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--parts", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--a-epochs-small", type=int, default=2, help="part a: epochs of cnn-small")
    parser.add_argument("--a-epochs-resnet", type=int, default=1, help="part a: epochs of resnet18")
    parser.add_argument("--a-repeats", type=int, default=2, help="part a: runs per contender (median reported)")
    parser.add_argument(
        "--a-contenders",
        default=",".join(CONTENDERS),
        help=f"part a: comma-separated subset of {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--a-resnet-samples",
        type=int,
        default=512,
        help="part a: resnet18 trains on this seeded subset of the train split (0: all 4708)",
    )
    parser.add_argument("--c-datasets", default="pneumoniamnist,adrenalmnist3d")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=15.0,
        help="part c: the costliest deep models get fewer epochs to fit this (default 15)",
    )
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.c_datasets = [d.strip() for d in args.c_datasets.split(",") if d.strip()]
    if not check_data(args, "medmnist/pneumoniamnist.npz", "medmnist/adrenalmnist3d.npz"):
        return 1
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    # -- the up-front estimate, from this machine's measured training speed -------------------
    print("measuring training speed per model for the time estimate ...")
    needed = {"cnn-small": (2, 28, 128)}
    if "a" in parts and not args.quick:
        needed["resnet18"] = (2, 28, 128)
    if "c" in parts:
        for ds, entries in C_PLAN.items():
            if ds in args.c_datasets:
                for model, ep in entries:
                    if ep:
                        from medlens.models.registry import get_model

                        d = get_model(model).defaults
                        needed[model] = (C_SIZES[ds][0], 28, int(d.get("batch_size", 64)))
    if args.quick:
        needed = {m: v for m, v in needed.items() if m in ("cnn-small", "cnn-2.5d")}
    ips = {
        m: probe_ips(m, dims=d, img_size=s, batch_size=b, seconds=0.5 if args.quick else 1.5)
        for m, (d, s, b) in needed.items()
    }
    for m, v in ips.items():
        print(f"  {m:16s} {v:8.1f} training img/s")
    specs, est_a = part_a_plan(args, ips) if "a" in parts else ([], 0.0)
    est_a *= 1 if args.quick else args.a_repeats
    est_b = (20 if args.quick else 9 * 12 + 4 * 40) if "b" in parts else 0.0
    plan_c, est_c, cut = part_c_plan(args, ips) if "c" in parts else ({}, 0.0, {})
    print(
        f"estimated time: part a {fmt_minutes(est_a)}, part b {fmt_minutes(est_b)}, part c {fmt_minutes(est_c)}"
        + (
            f" (part c epochs cut to fit --budget-minutes {args.budget_minutes:g}: "
            + ", ".join(f"{k} {a}->{b}" for k, (a, b) in cut.items())
            + ")"
            if cut
            else ""
        )
        + f"; total about {fmt_minutes(est_a + est_b + est_c)}",
        flush=True,
    )
    if est_a + est_b + est_c > 25 * 60:
        print(
            "note: over 25 min; lower --a-epochs-* / --a-resnet-samples / --budget-minutes, or run --parts separately"
        )
    if args.estimate_only:
        return 0

    started = time.perf_counter()
    if "a" in parts:
        print("part a: training loop overhead (one process per contender)")
        rows = part_a(args, specs, 1 if args.quick else args.a_repeats)
        record(args, "train-loop", "Training: medlens (Lightning) vs a plain PyTorch loop", part_a_markdown(rows))
    if "b" in parts:
        print("part b: inference throughput and latency")
        rows = part_b(args)
        record(
            args,
            "inference",
            "Inference: throughput and latency per model family (CPU)",
            part_b_markdown(rows, threads),
        )
    if "c" in parts:
        print("part c: every family on PneumoniaMNIST / AdrenalMNIST3D")
        rows = part_c(args, plan_c)
        record(
            args,
            "train-families",
            "Training: every model family on PneumoniaMNIST and AdrenalMNIST3D",
            part_c_markdown(rows, cut, args.budget_minutes),
        )
    print(f"done in {fmt_minutes(time.perf_counter() - started)} (estimated {fmt_minutes(est_a + est_b + est_c)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
