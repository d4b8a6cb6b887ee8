"""Batch prediction: `medlens predict RUN FOLDER --out DIR` on 10,000 images against the network alone.

For each model (cnn-small and resnet18, trained on PneumoniaMNIST, then ``medlens evaluate`` so
that the card holds the temperature and abstention rule chosen on validation, as after ``compare``):

* **network**: the inference table's measure (``bench_train.py`` part b): forward + softmax of a
  batch of 256 random 28x28 inputs under ``torch.inference_mode``, images/s, on the trained network
  as the registry builds it (channels-last; without the BatchNorm folding of medlens's bundle);
* **bundle, in memory**: :meth:`Predictor.answer_prepared` on inputs read and preprocessed
  beforehand (untimed), batches of 64: calibration, decision, uncertainty, the out-of-distribution
  guard and the Prediction objects, no files;
* **medlens predict**: the command as a user runs it, a fresh process per repeat, into an empty
  folder: reading the 10,000 PNGs, preprocessing, answering, one JSON per image, the journal;
  images/s over the process's whole wall time (start-up and model loading included). With the
  default reader workers, with ``--workers 0``, and with ``--devices 2`` (two DDP processes, gloo).

The 10,000 inputs: PneumoniaMNIST's 5,856 images (train, val, test) as 28x28 PNG files, and the
first 4,144 of them again mirrored left-right (distinct files and content). Repeats alternate
between contenders; medians of ``--repeats``.

    python benchmarks/bench_batch_predict.py                 # full (about 25 min on 2 cores)
    python benchmarks/bench_batch_predict.py --quick         # 500 images, 1 repeat; never records
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import LOAD_CAVEAT, add_common_args, check_data, load_note, record  # noqa: E402

MODELS = {"cnn-small": ["--epochs", "3"], "resnet18": ["--epochs", "1", "--max-samples", "1000"]}
N_IMAGES = 10_000


def medlens(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medlens.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def write_images(npz: Path, folder: Path, n: int) -> Path:
    """``n`` 28x28 PNGs: every PneumoniaMNIST image, then mirrored copies (cached)."""
    from PIL import Image

    done = folder / f".complete-{n}"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = np.load(npz)
    images = np.concatenate([data[f"{s}_images"] for s in ("train", "val", "test")])
    for i in range(n):
        img = images[i] if i < len(images) else images[i - len(images)][:, ::-1]
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"img{i:05d}.png")
    done.touch()
    return folder


def prepare_run(npz: Path, model: str, work: Path) -> Path:
    run = work / f"run-{model}"
    if (run / "comparison.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    for args in (
        ["train", npz, "--model", model, *MODELS[model], "--seed", "0", "--no-progress", "--out", run],
        ["evaluate", run, "--no-report"],
    ):
        res = medlens(*args)
        if res.returncode != 0:
            raise SystemExit(f"medlens {args[0]} failed:\n{res.stderr[-3000:]}")
    return run


def network_rate(predictor: Any, repeats: int) -> float:
    """The inference table's measure on this bundle's trained network as the registry builds it
    (no BatchNorm folding; channels-last, as the bundle answered up to 4de2f93), images/s, median."""
    import torch

    from benchmarks.bench_train import _time_batches

    net = predictor.bundle.trained_network().to(memory_format=torch.channels_last)
    x = torch.rand(256, 1, 28, 28)

    @torch.inference_mode()
    def fwd(batch):
        return torch.softmax(net(batch), 1)

    return 256 / _time_batches(fwd, x, 3.0, repeats)


def bundle_rate(predictor: Any, items: list, repeats: int) -> tuple[float, list[float]]:
    """Answers per second of the in-memory path (inputs prepared beforehand), median of repeats."""
    prepared = [(item, predictor.prepare_item(item)) for item in items]
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(prepared), 64):
            for _, answer in predictor.answer_prepared(prepared[i : i + 64]):
                assert not isinstance(answer, Exception), answer
        rates.append(len(prepared) / (time.perf_counter() - started))
    return statistics.median(rates), rates


def cli_rate(run: Path, images: Path, out: Path, extra: list[str], n: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    res = medlens("predict", run, images, "--out", out, "--no-progress", *extra, env={"OMP_NUM_THREADS": ""})
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"medlens predict failed ({res.returncode}):\n{res.stderr[-3000:]}")
    answered = [json.loads(x) for p in (out / ".predict").glob("rank*.jsonl") for x in p.read_text().splitlines()]
    names = [e["name"] for e in answered if e["ok"]]
    if len(names) != n or len(set(names)) != n:
        raise SystemExit(f"expected {n} answers exactly once, journal holds {len(names)} ({len(set(names))} distinct)")
    return n / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=N_IMAGES)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    if not check_data(args, "medmnist/pneumoniamnist.npz"):
        return 1
    if args.quick:
        args.images, args.repeats = 500, 1
    work = args.out or ROOT / "benchmarks" / ".batch_predict"
    work.mkdir(parents=True, exist_ok=True)
    npz = args.data / "medmnist" / "pneumoniamnist.npz"
    images = write_images(npz, work / f"images-{args.images}", args.images)
    from medlens.progress import quiet_libraries
    from medlens.serving.predictor import Predictor, find_inputs

    quiet_libraries(False)
    items, problems = find_inputs([images])
    assert not problems and len(items) == args.images
    started = time.perf_counter()
    rows = []
    for model in args.models.split(","):
        run = prepare_run(npz, model, work)
        predictor = Predictor.from_run(run)
        card = predictor.card.to_dict()
        net = network_rate(predictor, 5)
        bundle, _ = bundle_rate(predictor, items, max(1, args.repeats // 2))
        contenders = {
            "default workers": [],
            "--workers 0": ["--workers", "0"],
            "--batch-size 256": ["--batch-size", "256"],
        }
        rates: dict[str, list[float]] = {k: [] for k in contenders}
        for r in range(args.repeats):
            for name, extra in contenders.items():
                if name != "default workers" and r >= max(1, args.repeats // 2):
                    continue
                rates[name].append(cli_rate(run, images, work / "out", extra, args.images))
                print(f"  {model} {name}: {rates[name][-1]:.1f} img/s", flush=True)
        ddp = cli_rate(run, images, work / "out", ["--devices", "2"], args.images)
        rows.append(
            {
                "model": model,
                "uncertainty": (card.get("abstention") or {}).get("method", "default rule"),
                "network": net,
                "bundle": bundle,
                "cli": {k: statistics.median(v) for k, v in rates.items()},
                "cli_runs": rates,
                "ddp": ddp,
            }
        )
        print(json.dumps(rows[-1], default=float), flush=True)
    minutes = (time.perf_counter() - started) / 60
    body = markdown(rows, args, minutes)
    print(body)
    record(args, "batch-predict", "Batch prediction: 10,000 images through `medlens predict --out`", body)
    return 0


def markdown(rows: list[dict[str, Any]], args, minutes: float) -> str:
    lines = [
        f"{args.images} PneumoniaMNIST 28x28 PNG files (5,856 images and 4,144 mirrored copies), one JSON answer "
        "each into an empty folder; each model trained on PneumoniaMNIST then `medlens evaluate` (temperature and "
        "abstention chosen on validation). *network*: the inference table's measure on the same trained network, unfolded and channels-last (batch 256, "
        "forward + softmax, random inputs); *bundle*: answers from inputs read and preprocessed beforehand, batches of "
        "64 (calibration, decision, uncertainty, out-of-distribution guard); *predict*: `medlens predict RUN FOLDER "
        f"--out DIR --no-progress` as a fresh process, images over its whole wall time (start-up included); median of "
        f"{args.repeats} runs with the defaults (batches of 64, one reader worker per core beyond the first), "
        f"{max(1, args.repeats // 2)} each with `--workers 0` and `--batch-size 256`, one with `--devices 2` (two DDP "
        "processes, gloo). Every run checked: each image answered exactly once in the journals.",
        "",
        "| model | uncertainty | network img/s | bundle img/s | predict img/s (defaults) | runs | "
        "predict `--workers 0` | predict `--batch-size 256` | predict `--devices 2` | predict / network | "
        "predict / bundle |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        best = r["cli"]["default workers"]
        runs = ", ".join(f"{v:.0f}" for v in r["cli_runs"]["default workers"])
        lines.append(
            f"| {r['model']} | {r['uncertainty']} | {r['network']:.0f} | {r['bundle']:.0f} | {best:.0f} | {runs} | "
            f"{r['cli']['--workers 0']:.0f} | {r['cli']['--batch-size 256']:.0f} | {r['ddp']:.0f} | "
            f"{best / r['network']:.2f} | {best / r['bundle']:.2f} |"
        )
    lines += ["", f"Total {minutes:.1f} min. {LOAD_CAVEAT} {load_note()}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
