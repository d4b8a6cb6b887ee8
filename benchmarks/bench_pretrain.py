"""Self-supervised pretraining: test AUC/ACC on PneumoniaMNIST from scratch vs from a SimCLR encoder.

Per model: one ``medlens pretrain`` (SimCLR, seed 0) on the training and validation images of
PneumoniaMNIST without their labels; then, per seed, two runs of
:func:`medlens.training.run.train` that differ only in ``weights``: *scratch* (random
initialisation) and *pretrained* (the encoder, a fresh head). Same recipe otherwise (the study's
defaults: AdamW, cosine, light augmentation, class-weighted loss, best epoch by validation AUC).
The pretraining settings are fixed here before any test figure is seen (SimCLR's usual
temperature 0.2, batch 256, AdamW 1e-3); nothing is chosen on the test split.

Reported per seed and as mean ± sd: test AUC with its 95% bootstrap CI, ACC (MedMNIST's 0.5
rule), validation AUC, DeLong's two-sided p of the paired AUC difference (same test images), and
the fit times; per model the pretraining's time, final loss and top-1 (share of views whose
nearest other view is their partner).

    python benchmarks/bench_pretrain.py                      # full: cnn-small and resnet18, seeds 0,1,2
    python benchmarks/bench_pretrain.py --models cnn-small:30:50 --seeds 0 --no-record
    python benchmarks/bench_pretrain.py --quick              # 200 samples, 1 epoch, no record
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import (  # noqa: E402
    LOAD_CAVEAT,
    add_common_args,
    check_data,
    f3,
    fmt_minutes,
    load_note,
    mean_sd,
    read_predictions,
    record,
    train_model,
)

DEFAULT_MODELS = "cnn-small:30:50,resnet18:6:8"
TEMPERATURE, BATCH, LR = 0.2, 256, 1e-3


def parse_models(text: str) -> list[tuple[str, int, int]]:
    """``MODEL:FINETUNE_EPOCHS:PRETRAIN_EPOCHS,...``."""
    out = []
    for part in text.split(","):
        name, epochs, pre = part.strip().split(":")
        out.append((name, int(epochs), int(pre)))
    return out


def pretrain_encoder(source: Path, model: str, out: Path, epochs: int, n_cap: int | None, threads: int | None):
    from medlens.runs import read_json
    from medlens.training.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        source=str(source),
        out=str(out / f"{model}.safetensors"),
        model=model,
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        temperature=TEMPERATURE,
        max_samples=n_cap,
        threads=threads,
        progress=False,
    )
    weights = pretrain(config)
    return weights, read_json(config.paths()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tuning seeds")
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"MODEL:EPOCHS:PRETRAIN_EPOCHS,... (default {DEFAULT_MODELS})"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not check_data(args, "medmnist/pneumoniamnist.npz"):
        return 1
    src = args.data / "medmnist" / "pneumoniamnist.npz"
    n_cap = 200 if args.quick else None
    models = parse_models(args.models)
    if args.quick:
        models = [(m, 1, 1) for m, _, _ in models]
    out = (args.out or ROOT / "runs" / "bench") / ("pretrain-quick" if args.quick else "pretrain")
    started = time.perf_counter()
    from medlens.evaluation.statistics import bootstrap_ci, delong_test

    sections = []
    for model, epochs, pre_epochs in models:
        t0 = time.perf_counter()
        weights, card = pretrain_encoder(src, model, out / "encoders", pre_epochs, n_cap, args.threads)
        pre_s = time.perf_counter() - t0
        result = card["result"]
        print(
            f"{model}: pretrained {pre_epochs} epochs on {card['images']['n']} images in {fmt_minutes(pre_s)}, "
            f"loss {f3(result['final_loss'])}, top-1 {f3(result['final_top1'])}",
            flush=True,
        )
        rows = []
        for seed in seeds:
            res = {}
            for mode in ("scratch", "pretrained"):
                settings = dict(seed=seed, epochs=epochs, max_samples=n_cap, threads=args.threads)
                if mode == "pretrained":
                    settings["weights"] = str(weights)
                r = train_model(src, model, out / f"{model}-seed{seed}-{mode}", **settings)
                m = r["metrics"]
                _, y, p = read_predictions(r["model_dir"])
                _, lo, hi = bootstrap_ci(y, p, "auc", task="binary", seed=seed)
                res[mode] = {
                    "auc": m["test"].get("auc"),
                    "ci": (lo, hi),
                    "acc": m["test"].get("acc"),
                    "val_auc": m["val"].get("auc"),
                    "fit_s": m["timing"].get("total_seconds"),
                    "p": p[:, 1],
                    "y": y,
                }
                print(
                    f"  {model} seed {seed} {mode:10s} test AUC {f3(res[mode]['auc'])} ACC {f3(res[mode]['acc'])} "
                    f"val AUC {f3(res[mode]['val_auc'])} fit {res[mode]['fit_s']:.0f} s",
                    flush=True,
                )
            dl = delong_test(res["scratch"]["y"], res["scratch"]["p"], res["pretrained"]["p"])
            rows.append({"seed": seed, **res, "delong_p": dl.get("p_value", dl.get("p"))})
        sections.append(
            {"model": model, "epochs": epochs, "pre_epochs": pre_epochs, "pre_s": pre_s, "card": card, "rows": rows}
        )
    elapsed = time.perf_counter() - started
    print(f"done in {fmt_minutes(elapsed)}")
    record(
        args,
        "pretrain",
        "Self-supervised pretraining on PneumoniaMNIST (SimCLR)",
        markdown(sections, args, n_cap, elapsed),
    )
    return 0


def markdown(sections, args, n_cap, elapsed: float) -> str:
    lines = [
        "PneumoniaMNIST (28 px), official splits"
        + (f" capped at {n_cap} per split" if n_cap else "")
        + ". *pretrained*: `medlens pretrain` (SimCLR, temperature "
        f"{TEMPERATURE}, batch {BATCH}, AdamW {LR:g} with a cosine schedule, seed 0) on the training and validation "
        "images without labels, then `train --weights` (fresh head); *scratch*: the same training from random "
        "weights. Same seed per pair, same recipe (the study's defaults). Pretraining settings fixed before any "
        "test figure was seen. Test AUC with a 95% bootstrap CI; ACC at MedMNIST's 0.5 rule; DeLong: two-sided "
        "p of the paired AUC difference on the same test images.",
    ]
    for s in sections:
        r0 = s["card"]["result"]
        lines += [
            "",
            f"**{s['model']}**: {s['epochs']} training epochs; pretraining {s['pre_epochs']} epochs on "
            f"{s['card']['images']['n']} images in {fmt_minutes(s['pre_s'])} (final loss {f3(r0['final_loss'])}, "
            f"top-1 {f3(r0['final_top1'])}).",
            "",
            "| seed | AUC scratch [95% CI] | AUC pretrained [95% CI] | DeLong p | ACC scratch | ACC pretrained "
            "| val AUC scratch | val AUC pretrained | fit s scratch | fit s pretrained |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["rows"]:
            a, b = r["scratch"], r["pretrained"]
            lines.append(
                f"| {r['seed']} | {_with_ci(a)} | {_with_ci(b)} | {_p(r['delong_p'])} | {f3(a['acc'])} | {f3(b['acc'])} "
                f"| {f3(a['val_auc'])} | {f3(b['val_auc'])} | {a['fit_s']:.0f} | {b['fit_s']:.0f} |"
            )
        rows = s["rows"]
        col = lambda mode, k: [r[mode][k] for r in rows]  # noqa: E731, B023 - used within this iteration
        lines.append(
            f"| mean ± sd | {mean_sd(col('scratch', 'auc'))} | {mean_sd(col('pretrained', 'auc'))} | | "
            f"{mean_sd(col('scratch', 'acc'))} | {mean_sd(col('pretrained', 'acc'))} | "
            f"{mean_sd(col('scratch', 'val_auc'))} | {mean_sd(col('pretrained', 'val_auc'))} | "
            f"{statistics.mean(col('scratch', 'fit_s')):.0f} | {statistics.mean(col('pretrained', 'fit_s')):.0f} |"
        )
        diffs = [b - a for a, b in zip(col("scratch", "auc"), col("pretrained", "auc"))]
        lines += ["", f"AUC pretrained - scratch per seed: {', '.join(f'{d:+.3f}' for d in diffs)}."]
    lines += ["", f"Total {fmt_minutes(elapsed)}. " + LOAD_CAVEAT + " " + load_note() + "."]
    return "\n".join(lines)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _with_ci(res: dict) -> str:
    lo, hi = res["ci"]
    return f"{f3(res['auc'])} [{f3(lo)}, {f3(hi)}]"


if __name__ == "__main__":
    sys.exit(main())
