"""`medlens compare --suite quick` on PneumoniaMNIST: two code versions side by side, one run.

Each version runs the real CLI in its own subprocess, one after the other, on this machine:

* ``--before REV`` (default ``f3d149b``, the commit before bf16 training) is exported with
  ``git archive REV | tar -x`` into a temporary folder (no worktree metadata) and run from there
  with ``PYTHONPATH`` and the working directory set to it;
* ``--after REV`` the same; without it, the repository's working tree as it is.

Both use this interpreter and its installed packages (``sys.executable``), the same source, seed
(0), suite and flags: ``python -m medlens.cli.main compare SOURCE --suite quick --out DIR --seed 0``
plus ``--threads N`` and ``--no-progress`` when both versions' ``compare --help`` offers them.
Before timing, each tree is byte-compiled (``compileall``) so neither pays for writing ``.pyc``
files, and the subprocess is checked to import ``medlens`` from the intended tree.

``--repeats N`` alternates before, after, before, after, ... so load on a shared machine hits both.
Reported per version: the wall seconds of every run and their median, ``study.json``'s
``timings`` (per model, ``evaluation``, ``total``) and, per model, test AUC and ACC from
``comparison.json``; every run's metrics are compared with the first *before* run, and any value
differing by more than 1e-6 is printed and recorded.

    python benchmarks/bench_compare.py                      # full: quick suite, 1 repeat (records)
    python benchmarks/bench_compare.py --repeats 3
    python benchmarks/bench_compare.py --quick              # 200 samples, 1 epoch, no record
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import (  # noqa: E402
    LOAD_CAVEAT,
    add_common_args,
    check_data,
    fmt_minutes,
    load_note,
    probe_ips,
    record,
)

KEY = "compare-quick"
TITLE = "Compare: `medlens compare --suite quick` on PneumoniaMNIST, two code versions"
DATA_REL = "medmnist/pneumoniamnist.npz"
N_TRAIN, N_VAL = 4708, 524
TOLERANCE = 1e-6
CHANGES = (
    "What changed between f3d149b and the *after* version in what `compare` runs: deep models train "
    "with `--precision auto`, i.e. bf16 mixed precision on a CPU with AMX (this one has it), and 2D "
    "networks train channels-last (68e7f47); the optimiser step is fused (f5c5567); the bundle that "
    "writes the predictions answers channels-last (231e161: outputs equal within 1e-7) and the guard "
    "scores a batch in one pass (da528bd). The record this replaces measured the inference core "
    "(4dcf82b -> 4fe2a9f): 469.3 s -> 461.5 s wall, every metric equal to within 1e-6; that 461.5 s "
    "is the 'today' of issue 14's 'at most half'."
)


# ============================================================================================
# versions
# ============================================================================================
def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip()


def export_tree(rev: str, parent: Path) -> Path:
    """``git archive REV | tar -x`` into a fresh folder under ``parent``; returns the folder."""
    dest = Path(tempfile.mkdtemp(prefix=f"medlens-{rev.replace('/', '_')}-", dir=parent))
    archive = subprocess.Popen(["git", "archive", rev], cwd=ROOT, stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"could not export {rev} (git archive {rev} | tar -x -C {dest})")
    return dest


def working_tree_state() -> tuple[str, str]:
    """(label, fingerprint) of the working tree's code: HEAD plus uncommitted files under medlens/.

    Taken right before and after each run from the working tree: another process editing the tree
    meanwhile shows up as a changed fingerprint, and the section says so."""
    import hashlib

    head = git("rev-parse", "--short", "HEAD")
    changed = sorted(
        {line[3:] for line in git("status", "--porcelain", "--untracked-files=all", "--", "medlens").splitlines()}
    )
    digest = hashlib.sha256(
        (head + git("diff", "HEAD", "--", "medlens") + "".join(changed)).encode()
        + b"".join((ROOT / c).read_bytes() for c in changed if (ROOT / c).is_file())
    ).hexdigest()[:12]
    if not changed:
        return f"working tree (HEAD {head}, no uncommitted changes under medlens/)", digest
    names = ", ".join(f"`{c}`" for c in changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"working tree (HEAD {head} plus uncommitted changes to {names})", digest


def version_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["COLUMNS"] = "200"  # help text unwrapped
    env.pop("MEDLENS_VERBOSE", None)
    return env


def compare_flags(tree: Path) -> set[str]:
    """The long options of ``medlens compare --help`` in ``tree``."""
    r = subprocess.run(
        [sys.executable, "-m", "medlens.cli.main", "compare", "--help"],
        cwd=tree,
        env=version_env(tree),
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"`medlens compare --help` failed in {tree}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", r.stdout))


def prepare(tree: Path) -> None:
    """Byte-compile the tree and check that its subprocess imports medlens from it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "medlens")], cwd=tree, check=False)
    r = subprocess.run(
        [sys.executable, "-c", "import medlens; print(medlens.__file__)"],
        cwd=tree,
        env=version_env(tree),
        capture_output=True,
        text=True,
    )
    where = Path(r.stdout.strip() or "?").resolve()
    if r.returncode != 0 or tree.resolve() not in where.parents:
        raise SystemExit(f"medlens in {tree} imports from {where} instead:\n{r.stderr[-2000:]}")


# ============================================================================================
# runs
# ============================================================================================
def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_compare(tree: Path, cmd_tail: list[str], out_dir: Path, log_path: Path) -> dict[str, Any]:
    """One timed CLI run; also the CPU the run used and the CPU all other processes used meanwhile."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # compare would evaluate models left there by an earlier call
    cmd = [sys.executable, "-m", "medlens.cli.main", "compare", *cmd_tail[:1], "--out", str(out_dir), *cmd_tail[1:]]
    busy0, own0 = busy_cpu_seconds(), children_cpu_seconds()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=tree, env=version_env(tree), stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    busy1, own = busy_cpu_seconds(), children_cpu_seconds() - own0
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - own) / wall)
    res: dict[str, Any] = {
        "rc": rc,
        "wall_s": wall,
        "cpu_s": own,
        "others_cores": others,
        "out": out_dir,
        "log": log_path,
        "study": {},
        "comparison": {},
    }
    for key, name in (("study", "study.json"), ("comparison", "comparison.json")):
        try:
            res[key] = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            pass
    return res


def test_metric(comparison: dict[str, Any], model: str, metric: str) -> float | None:
    try:
        value = comparison["models"][model]["metrics"]["test"][metric]["value"]
    except (KeyError, TypeError):
        return None
    return None if value is None else float(value)


def flat_values(node: Any, prefix: str = "") -> dict[str, float]:
    """Every ``...["value"]`` number under a model's ``metrics`` (all splits), by path."""
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "value" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[prefix] = float(v)
            else:
                out.update(flat_values(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def metric_differences(ref: dict[str, Any], other: dict[str, Any]) -> tuple[list[str], int, list[str]]:
    """(differences > TOLERANCE, values compared, metric paths present in one only) of two comparisons."""
    diffs, only, n = [], [], 0
    ref_models, other_models = ref.get("models") or {}, other.get("models") or {}
    for model in sorted(set(ref_models) | set(other_models)):
        if model not in ref_models or model not in other_models:
            only.append(f"model {model}")
            continue
        a = flat_values(ref_models[model].get("metrics") or {})
        b = flat_values(other_models[model].get("metrics") or {})
        only += [f"{model}:{p}" for p in sorted(set(a) ^ set(b))]
        for p in sorted(set(a) & set(b)):
            n += 1
            same_nan = a[p] != a[p] and b[p] != b[p]
            if not same_nan and not abs(a[p] - b[p]) <= TOLERANCE:
                diffs.append(f"{model} {p}: {a[p]:.6f} vs {b[p]:.6f} (diff {b[p] - a[p]:+.2e})")
    return diffs, n, only


def read_probs(path: Path) -> tuple[list[int], list[list[float]], int] | None:
    """Labels, ``prob_*`` columns and their most decimals written, from a ``predictions_SPLIT.csv``."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None
    cols = [c for c in rows[0] if c.startswith("prob_")]
    decimals = max(len(r[c].partition(".")[2]) for r in rows[:50] for c in cols)
    labels = [int(float(r["label"])) if r.get("label", "") not in ("", None) else -1 for r in rows]
    return labels, [[float(r[c]) for c in cols] for r in rows], decimals


def prediction_check(ref_dir: Path, other_dir: Path, model: str) -> dict[str, Any]:
    """Max |difference| of the test probabilities of ``model`` in two runs, the decimals each wrote,
    and (binary) the test AUC of the other run's probabilities rounded to the reference's decimals."""
    a = read_probs(ref_dir / "models" / model / "predictions_test.csv")
    b = read_probs(other_dir / "models" / model / "predictions_test.csv")
    if a is None or b is None or len(a[1]) != len(b[1]):
        return {}
    diff = max(abs(x - y) for ra, rb in zip(a[1], b[1]) for x, y in zip(ra, rb))
    res: dict[str, Any] = {
        "max_dp": diff,
        "decimals": (a[2], b[2]),
        "precision": (precision(ref_dir, model), precision(other_dir, model)),
    }
    if len(a[1][0]) == 2 and set(a[0]) <= {0, 1}:
        from sklearn.metrics import roc_auc_score

        from medlens.evaluation.statistics import delong_test

        res["auc_ref_csv"] = float(roc_auc_score(a[0], [r[1] for r in a[1]]))
        res["auc_other_rounded"] = float(roc_auc_score(b[0], [round(r[1], a[2]) for r in b[1]]))
        res["delong"] = delong_test(a[0], [r[1] for r in b[1]], [r[1] for r in a[1]])
    return res


def precision(run_dir: Path, model: str) -> str | None:
    """The training precision a model's ``model.json`` records (deep models), else None."""
    path = run_dir / "models" / model / "model.json"
    return (json.loads(path.read_text()).get("config") or {}).get("precision") if path.exists() else None


def estimate_seconds(quick: bool, n_cap: int | None, epochs_cap: int | None) -> float:
    """Rough seconds of one `compare --suite quick` run: deep models timed here, classical from the table."""
    from medlens.study.suites import CLASSICAL_SECONDS_PER_1K, VAL_COST, suite_entries

    n_train, n_val = (min(N_TRAIN, n_cap), min(N_VAL, n_cap)) if n_cap else (N_TRAIN, N_VAL)
    total = 0.0
    for entry in suite_entries("quick", 2, "binary"):
        s = entry.settings
        if "epochs" not in s:
            total += CLASSICAL_SECONDS_PER_1K.get(entry.model, 40.0) * n_train / 1000
            continue
        epochs = min(int(s["epochs"]), epochs_cap) if epochs_cap else int(s["epochs"])
        ips = probe_ips(
            entry.model, dims=2, img_size=28, batch_size=int(s.get("batch_size", 32)), seconds=0.5 if quick else 1.5
        )
        total += epochs * (n_train + VAL_COST * n_val) / ips + 10
    return total + 30 + 0.05 * n_train  # loading, evaluation, report


# ============================================================================================
# main
# ============================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.set_defaults(threads=2)
    parser.add_argument(
        "--before",
        default="f3d149b",
        help="git revision of the earlier version (default f3d149b, before bf16 training)",
    )
    parser.add_argument("--after", default=None, help="git revision of the later version (default: the working tree)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per version, alternating (default 1)")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally-blocks run; subprocess.run kills the child
    if not check_data(args, DATA_REL):
        return 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    source = str((args.data / DATA_REL).resolve())
    n_cap = 200 if args.quick else None
    epochs_cap = 1 if args.quick else None

    est = estimate_seconds(args.quick, n_cap, epochs_cap)
    print(
        f"estimated time: 2 versions x {args.repeats} repeat(s) x about {fmt_minutes(est)} "
        f"= about {fmt_minutes(2 * args.repeats * est)} (rough: deep models timed here, classical from a table)",
        flush=True,
    )
    if args.estimate_only:
        return 0

    out = (args.out or ROOT / "runs" / "bench") / ("compare-quick-check" if args.quick else "compare-quick")
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        versions: list[dict[str, Any]] = []
        for role, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                versions.append({"role": role, "tree": ROOT, "label": working_tree_state()[0], "live": True})
            else:
                full = git("rev-parse", "--short", f"{rev}^{{commit}}")
                versions.append({"role": role, "tree": export_tree(rev, scratch), "label": f"{rev} ({full})"})
        for v in versions:
            prepare(v["tree"])
            v["flags"] = compare_flags(v["tree"])
            print(f"{v['role']:6s} {v['label']}: {v['tree']}")
        common = set.intersection(*(v["flags"] for v in versions))

        tail = [source, "--suite", "quick", "--seed", "0"]
        if "--threads" in common and args.threads:
            tail += ["--threads", str(args.threads)]
        if "--no-progress" in common:
            tail += ["--no-progress"]
        if n_cap:
            tail += ["--max-samples", str(n_cap)]
        if epochs_cap and "--epochs" in common:
            tail += ["--epochs", str(epochs_cap)]
        shown = ["python", "-m", "medlens.cli.main", "compare", tail[0], "--out", "DIR", *tail[1:]]
        command_text = " ".join(shown).replace(source, "pneumoniamnist.npz")
        print(f"each run: {' '.join(shown)}", flush=True)

        started = time.perf_counter()
        for i in range(args.repeats):
            for v in versions:
                name = f"{v['role']}-r{i + 1}"
                print(f"[{name}] running ...", flush=True)
                state = working_tree_state() if v.get("live") else None
                r = run_compare(v["tree"], tail, out / name, out / f"{name}.log")
                if state is not None:
                    r["state"] = (state, working_tree_state())
                    v["label"] = v.get("first_label") or state[0]
                    v.setdefault("first_label", state[0])
                v.setdefault("runs", []).append(r)
                t = r["study"].get("timings") or {}
                print(
                    f"[{name}] rc {r['rc']}  wall {r['wall_s']:.1f} s  evaluation {t.get('evaluation', '-')} s  "
                    f"total {t.get('total', '-')} s  CPU {r['cpu_s']:.0f} s  other processes "
                    f"{fs(r['others_cores'], 2)} cores  ({r['log']})",
                    flush=True,
                )
                if r["rc"] != 0:
                    print("".join(Path(r["log"]).read_text().splitlines(keepends=True)[-30:]), flush=True)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    body, failed = report(versions, args, command_text, elapsed)
    print()
    print(body)
    print(f"\ndone in {fmt_minutes(elapsed)} (estimated {fmt_minutes(2 * args.repeats * est)})")
    record(args, KEY, TITLE, body)
    return 1 if failed else 0


def median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def f6(v: Any) -> str:
    return "-" if v is None else f"{float(v):.6f}"


def fs(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def report(versions: list[dict[str, Any]], args: argparse.Namespace, command_text: str, elapsed: float):
    before, after = versions
    failed = [f"{v['role']} run {i + 1} (exit {r['rc']})" for v in versions for i, r in enumerate(v["runs"]) if r["rc"]]
    lines = [
        f"Each run: `{command_text}` as a subprocess with this interpreter and its installed packages, "
        f"`PYTHONPATH` and working directory set to the version's tree. *before*: {before['label']}, exported "
        f"with `git archive`; *after*: {after['label']}"
        + (", exported with `git archive`" if args.after else "")
        + f". {args.repeats} run(s) per version, alternating before/after"
        + ("; official splits capped at 200 samples per split, 1 epoch per deep model" if args.quick else "")
        + ". Wall s: the whole CLI process (imports, loading, training, evaluation, report); evaluation s and "
        "total s: `study.json` `timings`; CPU s: user + system time of the CLI process and its children; other "
        "processes: CPU that everything else on the machine used during the run (`/proc/stat`), in cores on "
        "average (this machine has " + str(os.cpu_count()) + "; well above 0 means the run competed for CPU).",
    ]
    for v in versions:
        states = [r["state"] for r in v["runs"] if "state" in r]
        if not states:
            continue
        first = states[0][0][1]
        moved = [
            f"{v['role']} run {i + 1}" for i, (start, end) in enumerate(states) if start[1] != first or end[1] != first
        ]
        if moved:
            lines += [
                "",
                f"**The working tree changed while it was being measured** ({', '.join(moved)}; another process "
                f"edited it): the *{v['role']}* figures mix code versions. Last state: {states[-1][1][0]}.",
            ]
    lines += [
        "",
        "| version | wall s (each run) | median wall s | evaluation s | total s | CPU s of the run | "
        "other processes meanwhile (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    medians = {}
    for v in versions:
        walls = [r["wall_s"] if r["rc"] == 0 else None for r in v["runs"]]
        medians[v["role"]] = median_or_none(walls)
        ev = [(r["study"].get("timings") or {}).get("evaluation") for r in v["runs"]]
        tot = [(r["study"].get("timings") or {}).get("total") for r in v["runs"]]
        each = ", ".join(fs(r["wall_s"]) + ("" if r["rc"] == 0 else f" (failed, exit {r['rc']})") for r in v["runs"])
        lines.append(
            f"| {v['role']} | {each} | {fs(medians[v['role']])} | "
            f"{' / '.join(fs(x) for x in ev)} | {' / '.join(fs(x) for x in tot)} | "
            f"{' / '.join(fs(r['cpu_s'], 0) for r in v['runs'])} | "
            f"{' / '.join(fs(r['others_cores'], 2) for r in v['runs'])} |"
        )
    if medians["before"] and medians["after"]:
        lines += ["", f"Ratio of median wall times after / before: **{medians['after'] / medians['before']:.2f}**."]
    else:
        lines += ["", "No ratio: a version has no successful run."]

    # per-model metrics and training seconds (first successful run of each version)
    ok = {v["role"]: next((r for r in v["runs"] if r["rc"] == 0 and r["comparison"]), None) for v in versions}
    models: list[str] = []
    for r in ok.values():
        for m in (r or {}).get("comparison", {}).get("models", {}) or {}:
            if m not in models:
                models.append(m)
    lines += [
        "",
        "Per model (first run of each version): test AUC and ACC from `comparison.json`, training wall seconds "
        "from `study.json` `timings`.",
        "",
        "| model | AUC before | AUC after | ACC before | ACC after | train s before | train s after | "
        "max abs diff of test probabilities | same metrics |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rounding_notes: list[tuple[str, dict[str, Any]]] = []
    for m in models:
        vals = {}
        for role in ("before", "after"):
            comp = (ok[role] or {}).get("comparison") or {}
            timings = ((ok[role] or {}).get("study") or {}).get("timings") or {}
            vals[role] = (test_metric(comp, m, "auc"), test_metric(comp, m, "acc"), timings.get(m))
        same = all(
            vals["before"][k] is not None
            and vals["after"][k] is not None
            and abs(vals["before"][k] - vals["after"][k]) <= TOLERANCE
            for k in (0, 1)
        )
        pc = prediction_check(ok["before"]["out"], ok["after"]["out"], m) if ok["before"] and ok["after"] else {}
        if not same and pc:
            rounding_notes.append((m, pc))
        lines.append(
            f"| {m} | {f6(vals['before'][0])} | {f6(vals['after'][0])} | {f6(vals['before'][1])} | "
            f"{f6(vals['after'][1])} | {fs(vals['before'][2])} | {fs(vals['after'][2])} | "
            f"{format(pc['max_dp'], '.1e') if 'max_dp' in pc else '-'} | "
            f"{'yes' if same else '**NO**'} |"
        )
    tt = [
        ((ok[role] or {}).get("study") or {}).get("timings", {}).get("training_total") for role in ("before", "after")
    ]
    lines.append(f"| *all training* | | | | | {fs(tt[0])} | {fs(tt[1])} | | |")

    # every metric value of every run against the first before run
    ref = ok["before"]
    lines += [
        "",
        "Same models, same metrics: with the same seed, the classical models (svm, elm) are deterministic, and "
        "the deep models on CPU with the same seed, threads and precision give the same weights, so every metric "
        f"value is expected to be equal to within {TOLERANCE:g} between repeats, and between the versions where "
        "they train in the same precision.",
    ]
    diff_lines: list[str] = []
    if ref is None:
        lines += ["", "No successful *before* run to compare against."]
    else:
        n_total, only_total = 0, set()
        for v in versions:
            for i, r in enumerate(v["runs"]):
                if r is ref or r["rc"] != 0 or not r["comparison"]:
                    continue
                diffs, n, only = metric_differences(ref["comparison"], r["comparison"])
                n_total += n
                only_total.update(only)
                diff_lines += [f"{v['role']} run {i + 1}: {d}" for d in diffs]
        if diff_lines:
            lines += [
                "",
                f"**{len(diff_lines)} metric value(s) differ by more than {TOLERANCE:g}** from the first *before* run:",
                "",
            ] + [f"- {d}" for d in diff_lines[:40]]
            if len(diff_lines) > 40:
                lines.append(f"- ... and {len(diff_lines) - 40} more")
        else:
            lines += [
                "",
                f"Checked: {n_total} metric values (every `value` under each model's `metrics`, all splits) of the "
                f"other runs against the first *before* run; none differs by more than {TOLERANCE:g}.",
            ]
        for m, pc in rounding_notes:
            da, db = pc["decimals"]
            if pc["precision"][0] != pc["precision"][1]:
                d = pc.get("delong")
                lines += [
                    "",
                    f"{m}: trained in precision {pc['precision'][0]} (*before*) and {pc['precision'][1]} (*after*): "
                    "different arithmetic, so different weights; test probabilities differ by at most "
                    f"{pc['max_dp']:.2g}."
                    + (
                        f" DeLong's paired test of the two versions' test AUCs: after - before = {d['diff']:+.4f} "
                        f"(95% CI {d['ci_low']:+.4f} to {d['ci_high']:+.4f}), p = {d['p_value']:.3f}."
                        if d
                        else ""
                    ),
                ]
                continue
            text = (
                f"{m}: the test probabilities of the two versions differ by at most {pc['max_dp']:.1e}; *before* "
                f"writes them to `predictions_test.csv` with {da} decimals, *after* with {db}."
            )
            if "auc_other_rounded" in pc:
                text += (
                    f" Test AUC of the *after* probabilities rounded to {da} decimals: "
                    f"{pc['auc_other_rounded']:.6f} (*before*'s CSV: {pc['auc_ref_csv']:.6f})"
                    + (
                        ", i.e. the AUC difference comes from ties that the rounding creates, not from the model."
                        if abs(pc["auc_other_rounded"] - pc["auc_ref_csv"]) <= TOLERANCE
                        else "."
                    )
                )
            lines += ["", text]
        if only_total:
            lines += [
                "",
                f"Present in one version only (not compared): {', '.join(sorted(only_total)[:20])}"
                + (f" and {len(only_total) - 20} more" if len(only_total) > 20 else "")
                + ".",
            ]
    if failed:
        lines += ["", "**Failed runs:** " + "; ".join(failed) + " (logs under the `--out` folder)."]
    lines += ["", CHANGES]
    lines += ["", f"Total {fmt_minutes(elapsed)}. " + LOAD_CAVEAT + " " + load_note() + "."]
    for d in diff_lines:
        print(f"DIFFERS: {d}")
    return "\n".join(lines), failed


if __name__ == "__main__":
    sys.exit(main())
