"""Serving benchmark: `medlens serve` against a minimal FastAPI endpoint serving the same model with plain torch.

Measured on 127.0.0.1, in one run:

* latency (p50 / p95, sequential requests) of one 2D prediction for a 224x224 PNG: medlens without
  heatmap and the plain-torch baseline in ``--repeats`` alternating phases (median over phases),
  medlens with heatmap (Grad-CAM) once;
* throughput (predictions/s) at ``--clients`` concurrent clients for ``--seconds`` seconds per
  phase, medlens and baseline in ``--repeats`` alternating phases; the ratios medlens / plain are
  the medians of the per-phase ratios;
* resident memory (VmRSS) of the medlens server sampled every 0.5 s across the run: flat or growing
  under load after the first load phase (warm-up), from phase to phase and within each phase.

The baseline serves the trained network in eval mode, channels-last (as medlens did up to 4de2f93);
medlens answers with its inference network, BatchNorm folded into the convolutions and exported
to ONNX Runtime (each checked equal within 1e-5 at load). medlens does more per request than the baseline (content sniffing, checks, the uncertainty
method of model.json, the out-of-distribution guard, a durable audit-log commit with fsync shared by
concurrent predictions, the prediction store); the baseline is decode + resize + min-max + forward +
softmax and nothing else, one request at a time.

    python benchmarks/bench_serve.py [--run RUN] [--quick]

Without ``--run`` a cnn-small is trained for one epoch on ``synthetic:chest2d`` at 224x224 first.
``--quick``: 10 s of load and fewer latency samples. Results go to BENCHMARKS.md (section "serve").
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the endpoint's string annotation here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------
# the baseline: the same weights behind one FastAPI endpoint, plain torch
# ------------------------------------------------------------------------------------------------
def baseline_app(run_dir: str, model: str | None):
    import numpy as np
    import torch
    from fastapi import FastAPI
    from PIL import Image

    from medlens.inference.bundle import Bundle

    bundle = Bundle.load(run_dir, model)  # verified like the service's; its network as trained, plain torch:
    net = bundle.trained_network()  # no BatchNorm folding (medlens's inference rewrite), channels-last
    net.to(memory_format=torch.channels_last)
    size = int(bundle.card.img_size)
    classes = bundle.class_names
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        data = await request.body()
        img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
        x = torch.from_numpy(img)[None, None]
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
        with torch.no_grad():
            p = torch.softmax(net(x), dim=1)[0].tolist()
        return {"probabilities": dict(zip(classes, p))}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            v = rss_mb(self.pid)
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self.stop.wait(self.every)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def latency(post, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = post()
        times.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return percentile(times, 50), percentile(times, 95)


def throughput(make_post, clients: int, seconds: float) -> tuple[float, int, int]:
    """(successful requests per second, successes, failures) with ``clients`` closed-loop clients."""
    ok, bad, lock = [0], [0], threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker():
        post = make_post()
        while time.monotonic() < stop_at:
            try:
                good = post().status_code == 200
            except Exception:  # noqa: BLE001
                good = False
            with lock:
                (ok if good else bad)[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0] / (time.monotonic() - t0), ok[0], bad[0]


def png_224() -> bytes:
    import numpy as np
    from PIL import Image

    from medlens.data.sources.synthetic import open_synthetic

    img = open_synthetic("chest2d").load(0).image[0]
    img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((224, 224), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def train_default(out: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "medlens.cli.main",
        "train",
        "synthetic:chest2d",
        "--model",
        "cnn-small",
        "--epochs",
        "1",
        "--img-size",
        "224",
        "--max-samples",
        "64",
        "--out",
        str(out),
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run directory (default: train a cnn-small at 224x224 first)")
    ap.add_argument("--model")
    ap.add_argument("--quick", action="store_true", help="10 s of load, fewer latency samples")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="latency and throughput phases, alternating contenders")
    ap.add_argument("--seconds", type=float, default=None, help="load duration (default 60, --quick 10)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not write BENCHMARKS.md")
    ap.add_argument("--baseline-server", nargs=2, metavar=("RUN", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.baseline_server:  # child process: the plain-torch endpoint
        import uvicorn

        run, port = args.baseline_server
        uvicorn.run(baseline_app(run, args.model), host="127.0.0.1", port=int(port), log_level="warning")
        return 0

    import httpx

    seconds = args.seconds or (10.0 if args.quick else 60.0)
    n_lat, n_heat = (30, 8) if args.quick else (200, 50)
    tmp = Path(tempfile.mkdtemp(prefix="medlens-bench-serve-"))
    run = args.run or train_default(tmp / "run")
    data = png_224()
    env = {**os.environ, "MEDLENS_PSEUDONYM_KEY": "bench"}

    mport, bport = free_port(), free_port()
    mcmd = [
        sys.executable,
        "-m",
        "medlens.cli.main",
        "serve",
        str(run),
        "--port",
        str(mport),
        "--audit-db",
        str(tmp / "audit.sqlite"),
        "--store-dir",
        str(tmp / "store"),
        "--log-level",
        "warning",
    ] + (["--model", args.model] if args.model else [])
    bcmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(run), str(bport)] + (
        ["--model", args.model] if args.model else []
    )
    mproc = subprocess.Popen(mcmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bproc = subprocess.Popen(bcmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    murl, burl = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{bport}"
    results: dict[str, object] = {}
    try:
        wait_up(murl, mproc)
        wait_up(burl, bproc)
        sampler = RssSampler(mproc.pid)
        sampler.start()
        client_m, client_b = httpx.Client(base_url=murl, timeout=120), httpx.Client(base_url=burl, timeout=120)

        def m_post(explain=False, client=client_m):
            return client.post(
                f"/v1/predictions?explain={str(explain).lower()}", content=data, headers={"Content-Type": "image/png"}
            )

        def b_post(client=client_b):
            return client.post("/predict", content=data, headers={"Content-Type": "image/png"})

        for _ in range(3):  # warm-up
            m_post(), m_post(True), b_post()
        repeats = 1 if args.quick else max(1, args.repeats)
        lat_m, lat_b = [], []
        for _ in range(repeats):  # alternating, so that both see the same machine
            lat_m.append(latency(m_post, n_lat))
            lat_b.append(latency(b_post, n_lat))
        results["medlens_heatmap"] = latency(lambda: m_post(True), n_heat)

        def make_m():
            c = httpx.Client(base_url=murl, timeout=120)
            return lambda: m_post(client=c)

        def make_b():
            c = httpx.Client(base_url=burl, timeout=120)
            return lambda: b_post(client=c)

        model_id = client_m.get("/v1/models").json()[0]["id"]
        tp_m, tp_b, loaded_windows = [], [], []
        for _ in range(repeats):
            t_load = time.monotonic()
            tp_m.append(throughput(make_m, args.clients, seconds))
            loaded_windows.append((t_load + 1.0, time.monotonic()))  # after its first second (threads started)
            tp_b.append(throughput(make_b, args.clients, seconds))
        sampler.stop.set()
        sampler.join()
        rss = [v for _, v in sampler.samples]
        # flatness is judged under load: the medlens load phases, first to last
        # a load phase without samples (none in practice: one every 0.5 s) is left out, not filled in
        phases = [p for p in ([v for t, v in sampler.samples if a <= t <= b] for a, b in loaded_windows) if p] or [rss]
        loaded = [v for phase in phases for v in phase]
    finally:
        for p in (mproc, bproc):
            p.terminate()
        for p in (mproc, bproc):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    q = max(1, len(loaded) // 4)
    first, last = statistics.mean(loaded[:q]), statistics.mean(loaded[-q:])
    growth = last - first
    tolerance = max(20.0, 0.05 * first)
    # A leak grows with the requests answered; in the first load phase the server's memory also rises
    # to its working level (measured: flat over 600 s of steady load). So: each phase's mean, and after
    # the first phase (warm-up) no growth from phase to phase nor within a phase (first to last quarter).
    phase_means = [statistics.mean(p) for p in phases]
    within = [statistics.mean(p[-max(1, len(p) // 4) :]) - statistics.mean(p[: max(1, len(p) // 4)]) for p in phases]
    steady = phase_means[1:] or phase_means
    across = steady[-1] - steady[0]
    flat = abs(across) < tolerance and all(abs(w) < tolerance for w in within[1:])
    verdict = ("flat" if flat else "GROWING") if len(phases) > 1 else "not judged (one load phase: warm-up only)"
    med = statistics.median
    m50, m95 = med(v[0] for v in lat_m), med(v[1] for v in lat_m)
    b50, b95 = med(v[0] for v in lat_b), med(v[1] for v in lat_b)
    h50, h95 = results["medlens_heatmap"]
    tpm, tpb = med(v[0] for v in tp_m), med(v[0] for v in tp_b)
    okm, badm = sum(v[1] for v in tp_m), sum(v[2] for v in tp_m)
    okb, badb = sum(v[1] for v in tp_b), sum(v[2] for v in tp_b)
    p50_ratio = med(m[0] / b[0] for m, b in zip(lat_m, lat_b))
    tp_ratio = med(m[0] / b[0] for m, b in zip(tp_m, tp_b))
    load = os.getloadavg()[0]
    each = lambda vals, i: ", ".join(f"{v[i]:.1f}" for v in vals)  # noqa: E731
    body = f"""
One 224x224 PNG, model `{model_id}` of run `{run}` (its uncertainty method: the card's; audit log with a durable
commit per group of concurrent predictions; pseudonyms on); {args.clients} concurrent clients for {seconds:g} s per
phase; {repeats} latency and {repeats} throughput phases per contender, alternating; {"--quick" if args.quick else "full"} run.
Latency: {n_lat} sequential requests per phase, p50/p95 per phase, median over phases. The load generator
(16 client threads) runs on the same 2 cores as the servers. The baseline serves the trained network (eval mode,
channels-last: what medlens served up to 4de2f93); medlens answers with BatchNorm folded into the convolutions,
exported to ONNX Runtime at load (the forward pass with its MC-dropout draws as one graph; each step checked
equal to PyTorch within 1e-5 at load).
Load average at the end: {load:.1f} on {os.cpu_count()} cores (the machine may be shared: figures are upper bounds on latency).

| | p50 (ms) | p95 (ms) | p50 per phase | throughput (pred/s) | per phase | errors under load |
|---|---:|---:|---|---:|---|---:|
| medlens, no heatmap | {m50:.1f} | {m95:.1f} | {each(lat_m, 0)} | {tpm:.1f} ({okm} in all phases) | {each(tp_m, 0)} | {badm} |
| medlens, with heatmap | {h50:.1f} | {h95:.1f} | | | | |
| plain torch FastAPI baseline | {b50:.1f} | {b95:.1f} | {each(lat_b, 0)} | {tpb:.1f} ({okb} in all phases) | {each(tp_b, 0)} | {badb} |

medlens / plain, median of the per-phase ratios: p50 at 1 client **{p50_ratio:.2f}x** (goal <= 1.3x: {"met" if p50_ratio <= 1.3 else "NOT met"}); throughput at {args.clients} clients **{tp_ratio:.2f}x** (goal >= 1.0x: {"met" if tp_ratio >= 1.0 else "NOT met"}).
medlens server resident memory (sampled every 0.5 s across the run): start {rss[0]:.0f} MB, max {max(rss):.0f} MB, end {rss[-1]:.0f} MB.
Under load ({len(loaded)} samples over the {len(phases)} medlens load phases): mean per phase {", ".join(f"{m:.0f}" for m in phase_means)} MB; within each phase (last quarter - first quarter) {", ".join(f"{w:+.0f}" for w in within)} MB.
After the first phase (warm-up: memory rises to its working level): phase {2 if len(phases) > 1 else 1} to phase {len(phases)} {across:+.0f} MB, within-phase changes at most {max((abs(w) for w in within[1:]), default=0.0):.0f} MB (tolerance {tolerance:.0f} MB): **{verdict}**.
Over all load phases, first quarter to last quarter (the measure of earlier records, warm-up included): {first:.0f} -> {last:.0f} MB ({growth:+.0f} MB).
"""
    print(body)
    if not args.no_record:
        from benchmarks._record import record_section

        record_section("serve", "Serving: latency, throughput, memory (bench_serve.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
