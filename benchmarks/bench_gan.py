"""GAN augmentation: test AUC/ACC of cnn-small on PneumoniaMNIST with and without ``--augment gan``.

For each seed, two runs of :func:`medlens.training.run.train` that differ only in ``augment``:

* ``light``: medlens's light augmentation (flip + small affine), the class-weighted loss;
* ``gan``: the same light augmentation, plus a conditional GAN trained on the training split
  whose samples fill the minority class (normal, 1214 vs 3494 pneumonia) up to the majority
  count — training split only; validation and test stay real.

Same seed, epochs, splits (the official ones), model and settings otherwise. Reported per seed
and as mean ± sd over seeds: test AUC, ACC (MedMNIST's 0.5 rule), ACC at the validation-chosen
threshold, DeLong p-value of the AUC difference (same test images), GAN and total fit time, and
the path of the GAN sample grid PNG (``RunDir.model(...).samples_png``).

    python benchmarks/bench_gan.py                    # full: seeds 0,1,2, 10 + 30 GAN epochs (records)
    python benchmarks/bench_gan.py --seeds 0,1,2,3,4 --no-record
    python benchmarks/bench_gan.py --quick            # 300 samples, 1 epoch, no record
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

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
    probe_ips,
    read_predictions,
    record,
    train_model,
)

N_TRAIN, N_VAL, N_MINORITY_GAP = 4708, 524, 3494 - 1214


def gan_seconds_per_image_epoch(quick: bool) -> float:
    """Seconds per (training image x GAN epoch), from one tiny timed GAN epoch on this machine."""
    import warnings

    from medlens.models.deep.gan import train_gan

    rng = np.random.default_rng(0)
    n = 128 if quick else 512
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_gan(x, y, num_classes=2, epochs=1, seed=0, show_progress=False)  # warm-up
        t0 = time.perf_counter()
        train_gan(x, y, num_classes=2, epochs=1, seed=0, show_progress=False)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for a full run)")
    parser.add_argument("--epochs", type=int, default=10, help="cnn-small epochs (default 10)")
    parser.add_argument("--gan-epochs", type=int, default=30, help="GAN epochs (default 30, medlens's default)")
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=25.0,
        help="reduce GAN epochs (never the classifier's) so the run fits this; 0: no limit",
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not check_data(args, "medmnist/pneumoniamnist.npz"):
        return 1
    if not args.quick and len(seeds) < 3:
        print("note: fewer than 3 seeds; the spread is not meaningful")
    src = args.data / "medmnist" / "pneumoniamnist.npz"
    n_cap = 300 if args.quick else None
    epochs = 1 if args.quick else args.epochs
    gan_epochs = 1 if args.quick else args.gan_epochs

    # -- estimate ------------------------------------------------------------------------------
    ips = probe_ips(args.model, dims=2, img_size=28, batch_size=128, seconds=0.5 if args.quick else 1.5)
    gan_cost = gan_seconds_per_image_epoch(args.quick)
    n_train, n_val = (n_cap, n_cap) if n_cap else (N_TRAIN, N_VAL)
    gap = int(n_train * (3494 - 1214) / 4708)
    base_s = epochs * (n_train + 0.35 * n_val) / ips + 10
    cls_gan_s = epochs * (n_train + gap + 0.35 * n_val) / ips + 10
    print(f"{args.model}: {ips:.0f} training img/s; GAN {gan_cost * 1000:.2f} ms per image-epoch on this machine")
    if args.budget_minutes and not args.quick:
        room = args.budget_minutes * 60 / len(seeds) - base_s - cls_gan_s
        fit = max(1, int(room / (n_train * gan_cost)))
        if fit < gan_epochs:
            print(
                f"GAN epochs reduced from {gan_epochs} to {fit} to fit --budget-minutes {args.budget_minutes:g} "
                f"({gan_epochs} would take about {fmt_minutes(gan_epochs * n_train * gan_cost)} per seed; "
                "--budget-minutes 0 keeps them)"
            )
            gan_epochs = fit
    gan_s = gan_epochs * n_train * gan_cost + cls_gan_s
    est = len(seeds) * (base_s + gan_s)
    print(
        f"estimated time: {len(seeds)} seeds x ({fmt_minutes(base_s)} without + {fmt_minutes(gan_s)} with GAN, "
        f"{gan_epochs} GAN epochs) = about {fmt_minutes(est)}",
        flush=True,
    )
    if args.estimate_only:
        return 0

    out = (args.out or ROOT / "runs" / "bench") / ("gan-quick" if args.quick else "gan")
    started = time.perf_counter()
    rows = []
    for seed in seeds:
        res = {}
        for mode in ("light", "gan"):
            settings = dict(
                seed=seed,
                epochs=epochs,
                patience=epochs,
                augment=mode,
                gan_epochs=gan_epochs,
                max_samples=n_cap,
                threads=args.threads,
            )
            r = train_model(src, args.model, out / f"seed{seed}-{mode}", **settings)
            m = r["metrics"]
            t = m.get("test", {})
            res[mode] = {
                "auc": t.get("auc"),
                "acc": t.get("acc"),
                "acc_thr": t.get("acc@threshold"),
                "fit_s": m["timing"].get("total_seconds"),
                "model_dir": r["model_dir"],
                "n_train_fit": m.get("n_train_fit"),
            }
            print(
                f"  seed {seed} {mode:5s}  AUC {f3(t.get('auc'))}  ACC {f3(t.get('acc'))}  ACC@thr "
                f"{f3(t.get('acc@threshold'))}  n_train {m.get('n_train_fit')}  fit {res[mode]['fit_s']:.0f} s",
                flush=True,
            )
        from medlens.evaluation.statistics import delong_test

        _, y, p_light = read_predictions(res["light"]["model_dir"])
        _, _, p_gan = read_predictions(res["gan"]["model_dir"])
        try:
            dl = delong_test(y, p_light[:, 1], p_gan[:, 1])
            p_value = dl.get("p_value", dl.get("p"))
        except Exception:  # noqa: BLE001 - tiny quick subsets may lack a class
            p_value = None
        png = res["gan"]["model_dir"].samples_png
        rows.append(
            {
                "seed": seed,
                **{f"{k}_{mode}": v for mode in res for k, v in res[mode].items() if k != "model_dir"},
                "delong_p": p_value,
                "png": png if png.is_file() else None,
            }
        )
    elapsed = time.perf_counter() - started
    print(f"done in {fmt_minutes(elapsed)} (estimated {fmt_minutes(est)})")
    for r in rows:
        print(f"  GAN sample grid (seed {r['seed']}): {r['png']}")
    record(
        args,
        "gan",
        "GAN augmentation on PneumoniaMNIST (cnn-small)",
        markdown(rows, args, epochs, gan_epochs, n_cap, elapsed),
    )
    return 0


def markdown(rows, args, epochs: int, gan_epochs: int, n_cap, elapsed: float) -> str:
    lines = [
        f"`{args.model}`, {epochs} epochs, official splits"
        + (f" capped at {n_cap} per split" if n_cap else "")
        + f"; *light*: medlens's light augmentation and class-weighted loss; *gan*: the same plus a conditional "
        f"GAN ({gan_epochs} epochs, trained on the training split) filling the minority class (normal) up to "
        "the majority count. Same seed per pair. ACC: MedMNIST's 0.5 rule; ACC@thr: threshold chosen on "
        "validation. DeLong: two-sided p of the paired AUC difference on the same test images.",
        "",
        "| seed | AUC light | AUC gan | ACC light | ACC gan | ACC@thr light | ACC@thr gan | DeLong p | train n (gan) | fit s light | fit s gan |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {f3(r['auc_light'])} | {f3(r['auc_gan'])} | {f3(r['acc_light'])} | "
            f"{f3(r['acc_gan'])} | {f3(r['acc_thr_light'])} | {f3(r['acc_thr_gan'])} | {f3(r['delong_p'])} | "
            f"{r['n_train_fit_gan']} | {r['fit_s_light']:.0f} | {r['fit_s_gan']:.0f} |"
        )
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    lines.append(
        f"| mean ± sd | {mean_sd(col('auc_light'))} | {mean_sd(col('auc_gan'))} | {mean_sd(col('acc_light'))} | "
        f"{mean_sd(col('acc_gan'))} | {mean_sd(col('acc_thr_light'))} | {mean_sd(col('acc_thr_gan'))} | | | "
        f"{statistics.mean(col('fit_s_light')):.0f} | {statistics.mean(col('fit_s_gan')):.0f} |"
    )
    diffs = [g - b for g, b in zip(col("auc_gan"), col("auc_light")) if g is not None and b is not None]
    if diffs:
        lines += [
            "",
            f"AUC difference gan - light per seed: {', '.join(f'{d:+.3f}' for d in diffs)} "
            f"(mean {statistics.mean(diffs):+.3f}).",
        ]
    pngs = [
        f"seed {r['seed']}: `{Path(r['png']).relative_to(ROOT) if str(r['png']).startswith(str(ROOT)) else r['png']}`"
        for r in rows
        if r["png"]
    ]
    if pngs:
        lines += ["", "GAN sample grids (one row of generated images per class): " + "; ".join(pngs) + "."]
    if not args.quick and gan_epochs < args.gan_epochs:
        lines += [
            "",
            f"GAN epochs were reduced from {args.gan_epochs} (medlens's default) to {gan_epochs} to fit "
            f"--budget-minutes {args.budget_minutes:g}; at the default, `--augment gan` on PneumoniaMNIST costs "
            "correspondingly more GAN training time.",
        ]
    lines += ["", f"Total {fmt_minutes(elapsed)}. " + LOAD_CAVEAT + " " + load_note() + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
