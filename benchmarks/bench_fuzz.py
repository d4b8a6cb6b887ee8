"""Fuzz benchmark: thousands of mutated inputs through `medlens data info`, `predict` and the REST API.

The inputs are the mutation corpus of ``tests/fuzz/corpus.py`` (bit flips, truncations, splices and
header fields set to edge values, for DICOM incl. RLE and multi-frame, PNG, JPEG, TIFF, BMP, NIfTI,
.nii.gz and MedMNIST npz) plus the hostile files of ``tests/fuzz/hostile.py`` (headers declaring huge
images). Each input goes through three targets, each call in a worker process:

* ``info``: ``medlens data info INPUT --json`` in-process (:func:`medlens.cli.main.main`): an
  exception escaping it is a traceback;
* ``predict``: :meth:`Predictor.predict_bytes` of a tiny ELM bundle trained here: any exception
  other than :class:`~medlens.errors.MedlensError` is a traceback;
* ``rest``: ``POST /v1/predictions`` through FastAPI's TestClient of ``create_app``: 5xx counted.

A call that takes longer than ``--timeout`` seconds is a hang (the worker is killed and replaced).
Memory: before each call the worker resets its peak RSS (``/proc/self/clear_refs``, Linux) and reads
its RSS; after the call the growth is peak RSS minus that. The maximum over all calls of inputs under
1 MB is recorded.

    python benchmarks/bench_fuzz.py [--n 5000] [--workers 2] [--timeout 30] [--no-record]

Results go to BENCHMARKS.md (section "fuzz").
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("info", "predict", "rest")


# -- the worker -----------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(run_dir: str, scratch: str) -> None:
    """Answer one JSON line per task read from stdin: {"path", "target"} -> {"outcome", "detail", "growth_mb"}."""
    import contextlib
    import io
    import logging
    import resource
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from fastapi.testclient import TestClient

    from medlens.cli.main import main as cli_main
    from medlens.errors import MedlensError
    from medlens.serving.app import create_app
    from medlens.serving.predictor import Predictor
    from medlens.serving.settings import ServeSettings

    predictor = Predictor.from_run(run_dir)
    settings = ServeSettings(
        run_dir=Path(run_dir),
        store_dir=Path(scratch) / f"store-{os.getpid()}",
        audit_url=str(Path(scratch) / f"audit-{os.getpid()}.sqlite"),
        max_upload_mb=4,
    )
    client = TestClient(create_app(settings, predictor=predictor), raise_server_exceptions=False)
    precise = _reset_peak()
    print(json.dumps({"ready": True, "precise": precise}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        path = Path(task["path"])
        data = path.read_bytes()
        precise = _reset_peak()
        before_kb = _status_kb("VmRSS")
        before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcome, detail = "ok", ""
        try:
            if task["target"] == "info":
                sink = io.StringIO()
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    code = cli_main(["data", "info", str(path), "--json"])
                outcome = "ok" if code == 0 else ("error" if code == 2 else f"exit {code}")
                detail = sink.getvalue()[-300:] if code not in (0, 2) else ""
            elif task["target"] == "predict":
                predictor.predict_bytes(data, path.name)
            else:
                answer = client.post("/v1/predictions", files={"file": (path.name, data, "application/octet-stream")})
                outcome = "5xx" if answer.status_code >= 500 else ("ok" if answer.status_code < 400 else "error")
                detail = f"{answer.status_code} {answer.text[:200]}" if answer.status_code >= 500 else ""
        except MedlensError:
            outcome = "error"
        except BaseException as e:  # noqa: BLE001 - counted, never hidden
            outcome, detail = "traceback", f"{type(e).__name__}: {str(e)[:200]}"
        if precise:
            growth_mb = max(0, _status_kb("VmHWM") - before_kb) / 1024
        else:  # an upper bound: the process's peak since start, minus the RSS before this call
            growth_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
            del before_max
        print(json.dumps({"outcome": outcome, "detail": detail, "growth_mb": round(growth_mb, 1)}), flush=True)


# -- the parent -----------------------------------------------------------------------------------
class Worker:
    """One worker process; :meth:`ask` returns its answer or None after ``timeout`` (then it is replaced)."""

    def __init__(self, run_dir: Path, scratch: Path):
        self.args = [sys.executable, __file__, "--worker", str(run_dir), str(scratch)]
        self.start()

    def start(self) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        ready = self._read(300)
        if not ready or not ready.get("ready"):
            raise RuntimeError("worker did not start")
        self.precise = ready["precise"]

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def ask(self, path: Path, target: str, timeout: float) -> dict | None:
        self.proc.stdin.write(json.dumps({"path": str(path), "target": target}) + "\n")
        self.proc.stdin.flush()
        answer = self._read(timeout)
        if answer is None:  # a hang or a crash: replace the worker
            self.proc.kill()
            self.proc.wait()
            self.start()
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def train_bundle(folder: Path) -> Path:
    run = folder / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medlens.cli.main",
            "train",
            "synthetic:chest2d@32",
            "--model",
            "elm",
            "--max-samples",
            "24",
            "--out",
            str(run),
        ],
        check=True,
        capture_output=True,
    )
    return run


def write_inputs(folder: Path, n: int, seed: int) -> list[Path]:
    from tests.fuzz import hostile
    from tests.fuzz.corpus import mutants

    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        hostile.rle_dicom_bomb(folder / "hostile-rle-65535.dcm"),
        hostile.png_bomb(folder / "hostile-png-12500.png"),
        hostile.nifti_gz_bomb(folder / "hostile-800.nii.gz"),
        hostile.nifti_lying(folder / "hostile-1e9.nii"),
        hostile.multiframe_dicom(folder / "hostile-100k-frames.dcm"),
        hostile.multiframe_dicom(folder / "hostile-4000-frames.dcm", frames=4000),
        hostile.dicom_with_is(folder / "hostile-is.dcm"),
        hostile.dicom_with_vr(folder / "hostile-vr.dcm"),
        hostile.dicom_without_ts(folder / "hostile-no-ts.dcm"),
    ]
    for name, suffix, data in mutants(n - len(paths), seed=seed):
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def run(n: int, workers: int, timeout: float, seed: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="medlens-fuzz-"))
    t0 = time.perf_counter()
    run_dir = train_bundle(scratch)
    inputs = write_inputs(scratch / "inputs", n, seed)
    tasks = [(p, t) for p in inputs for t in TARGETS]
    counts: dict[str, Counter] = {t: Counter() for t in TARGETS}
    examples: list[str] = []
    worst = {"growth_mb": 0.0, "input": "", "target": ""}
    worst_small = dict(worst)
    lock = threading.Lock()
    pool = [Worker(run_dir, scratch) for _ in range(workers)]
    next_task = iter(tasks)
    done = [0]

    def drive(w: Worker) -> None:
        while True:
            with lock:
                task = next(next_task, None)
            if task is None:
                return
            path, target = task
            answer = w.ask(path, target, timeout)
            with lock:
                done[0] += 1
                if answer is None:
                    counts[target]["hang"] += 1
                    examples.append(f"hang: {target} {path.name}")
                    continue
                counts[target][answer["outcome"]] += 1
                if answer["outcome"] not in ("ok", "error"):
                    examples.append(f"{answer['outcome']}: {target} {path.name}: {answer['detail']}")
                g = answer["growth_mb"]
                if g > worst["growth_mb"]:
                    worst.update(growth_mb=g, input=path.name, target=target)
                if path.stat().st_size < 1 << 20 and g > worst_small["growth_mb"]:
                    worst_small.update(growth_mb=g, input=path.name, target=target)
                if done[0] % 1500 == 0:
                    print(f"{done[0]}/{len(tasks)} calls, {time.perf_counter() - t0:.0f} s", flush=True)

    threads = [threading.Thread(target=drive, args=(w,)) for w in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    precise = all(w.precise for w in pool)
    for w in pool:
        w.close()
    return {
        "inputs": len(inputs),
        "calls": len(tasks),
        "counts": {t: dict(c) for t, c in counts.items()},
        "examples": examples[:20],
        "worst": worst,
        "worst_under_1mb": worst_small,
        "precise_memory": precise,
        "seconds": round(time.perf_counter() - t0, 1),
        "largest_input_bytes": max(p.stat().st_size for p in inputs),
    }


def render(r: dict, timeout: float) -> str:
    def total(kind: str) -> int:
        return sum(c.get(kind, 0) for c in r["counts"].values())

    rows = "\n".join(
        f"| {t} | {c.get('ok', 0)} | {c.get('error', 0)} | {c.get('traceback', 0)} | {c.get('5xx', 0)} | "
        f"{c.get('hang', 0)} | {sum(v for k, v in c.items() if k not in ('ok', 'error', 'traceback', '5xx', 'hang'))} |"
        for t, c in r["counts"].items()
    )
    memory = "peak RSS reset before each call (/proc/self/clear_refs)" if r["precise_memory"] else "upper bound"
    ws = r["worst_under_1mb"]
    examples = "\n".join(f"- {e}" for e in r["examples"]) or "- none"
    return f"""
{r["inputs"]} inputs (largest {r["largest_input_bytes"]} bytes), each through three targets: {r["calls"]} calls in {r["seconds"]} s.
Per-call timeout {timeout:.0f} s. Outcome per call: ok (an answer), error (one-line MedlensError, exit 2 or
a JSON 4xx), traceback (any other exception), 5xx, hang (timeout; worker replaced), other (another exit code).

| target | ok | error | traceback | 5xx | hang | other |
|---|---:|---:|---:|---:|---:|---:|
{rows}

**Totals: {total("traceback")} tracebacks, {total("5xx")} 5xx, {total("hang")} hangs.**
Largest peak-memory growth of one call ({memory}): {ws["growth_mb"]:.0f} MB
({ws["target"]} of `{ws["input"]}`), for inputs under 1 MB; goal: under 500 MB.

Calls that were not ok or error:
{examples}
"""


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="inputs (each goes through the three targets)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call before it counts as a hang")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    result = run(args.n, args.workers, args.timeout, args.seed)
    print(json.dumps(result, indent=2))
    body = render(result, args.timeout)
    print(body)
    if not args.no_record:
        from benchmarks._record import record_section

        record_section("fuzz", "Fuzzing: mutated inputs through data info, predict and the REST API", body)


if __name__ == "__main__":
    main()
