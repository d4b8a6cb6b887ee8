"""manifest.json: the sha256 of every artifact of a run, with what produced it.

:func:`record_files` is how a stage records what it wrote: each file's sha256 and the stage
that wrote it (``train:MODEL``, ``evaluate``, ``compare``, ``report``), leaving the entries of
other stages alone, so no stage re-approves a file it did not write. Training state
(``checkpoints/``, Lightning's ``logs/``) is outside the manifest. :func:`verify_manifest` checks files against it, so
``medlens serve`` and ``medlens predict`` refuse a bundle whose files changed since they were
written.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable

from medlens.runs import RunDir, read_json, read_yaml, sha256_file, write_json

EXCLUDED_DIRS = {"logs", "__pycache__", "serve"}  # serve/: audit log and prediction store of `medlens serve`
TRAINING_STATE = "checkpoints"  # recorded here, verified on --resume; not part of a model bundle
LIBRARIES = ("medlens", "torch", "lightning", "monai", "numpy", "scikit-learn", "scipy", "safetensors", "pydicom")


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@functools.cache
def git_commit() -> str | None:
    """The commit of the medlens source tree, when it is a git checkout (else None)."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def artifact_files(run_dir: str | Path) -> list[str]:
    """Relative POSIX paths of every artifact in the run directory (sorted)."""
    root = Path(run_dir)
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not path.is_file() or path.name.startswith(".") or path.name == "manifest.json":
            continue
        if EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            continue
        out.append(rel.as_posix())
    return sorted(out)


def record_files(run_dir: str | Path, files: Iterable[str | Path], stage: str, *, forget: str | None = None) -> dict:
    """Record the files ``stage`` wrote in ``manifest.json`` (and only those); returns the manifest.

    Each file's sha256, size and ``stage`` are written; entries of other files are left as they
    are, so a stage never re-approves a file it did not write. ``files`` are paths inside the run
    (absolute, or relative to it); one that no longer exists is removed from the manifest.
    ``forget``: a relative folder prefix (e.g. ``models/svm/``) whose old entries are dropped
    first, because the stage replaced that folder. The manifest also keeps, per stage, when it
    last wrote and with which command, and the libraries and code commit of the latest writer.
    """
    run = RunDir(run_dir)
    root = run.root.resolve()
    manifest = read_json(run.manifest) if run.manifest.is_file() else {}
    entries: dict[str, dict] = dict(manifest.get("files", {}))
    if forget:
        entries = {rel: e for rel, e in entries.items() if not rel.startswith(forget)}
    for f in files:
        path = Path(f)
        path = path if path.is_absolute() else run.root / path
        try:
            rel = path.resolve().relative_to(root).as_posix()
        except ValueError:  # written outside the run
            continue
        if path.is_file():
            entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "stage": stage}
        else:
            entries.pop(rel, None)
    return _write(run, manifest, entries, stage)


def _write(run: RunDir, manifest: dict, entries: dict[str, dict], stage: str) -> dict:
    """Write ``entries`` with the run's metadata and ``stage``'s time and command; returns the manifest."""
    seed = manifest.get("seed")
    if run.config.is_file():
        seed = (read_yaml(run.config) or {}).get("seed", seed)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stages = dict(manifest.get("stages", {}))
    stages[stage] = {"time": now, "command": " ".join(["medlens", *sys.argv[1:]]) if sys.argv else None}
    out = {
        "created": manifest.get("created", now),
        "updated": now,
        "seed": seed,
        "git_commit": git_commit(),
        "libraries": dict(library_versions()),
        "platform": f"{platform.system()} {platform.machine()}",
        "stages": stages,
        "files": dict(sorted(entries.items())),
    }
    write_json(run.manifest, out)
    return out


def record_replacement(run_dir: str | Path, new: str | Path, final: str | Path, stage: str) -> None:
    """Record the file ``new`` as ``final`` and move it there, safe against a kill at any moment.

    The entry of ``final`` gets the new hash and keeps the one it replaces (``replaces``) until
    the next record; only then is ``new`` renamed over ``final``. A process killed before the
    rename leaves the old file, after it the new one: both match the entry
    (:func:`verify_replaced`). Training records each checkpoint this way as it writes it.
    """
    run = RunDir(run_dir)
    rel = Path(final).resolve().relative_to(run.root.resolve()).as_posix()
    manifest = read_json(run.manifest) if run.manifest.is_file() else {}
    entries: dict[str, dict] = dict(manifest.get("files", {}))
    old = entries.get(rel, {}).get("sha256")
    entry = {"sha256": sha256_file(new), "bytes": Path(new).stat().st_size, "stage": stage}
    if old and old != entry["sha256"]:
        entry["replaces"] = old
    entries[rel] = entry
    _write(run, manifest, entries, stage)
    os.replace(new, final)


def verify_replaced(run_dir: str | Path, path: str | Path) -> str | None:
    """None when ``path`` matches its manifest entry (or the file that entry replaces), else why not."""
    run = RunDir(run_dir)
    rel = Path(path).resolve().relative_to(run.root.resolve()).as_posix()
    entry = (read_json(run.manifest).get("files", {}) if run.manifest.is_file() else {}).get(rel)
    if entry is None:
        return f"{path}: not listed in the manifest"
    if sha256_file(path) not in (entry.get("sha256"), entry.get("replaces")):
        return f"{path}: changed since it was written (sha256 differs from the manifest)"
    return None


def verify_manifest(run_dir: str | Path, files: Iterable[str] | None = None) -> list[str]:
    """Check ``files`` (relative paths; default: all listed) against manifest.json.

    Returns a list of one-line problems (empty when every file matches): a missing manifest,
    a file not listed, a missing file, or a changed hash.
    """
    run = RunDir(run_dir)
    if not run.manifest.is_file():
        return [f"{run.manifest}: no manifest"]
    listed = read_json(run.manifest).get("files", {})
    problems = []
    for rel in listed if files is None else [Path(f).as_posix() for f in files]:
        path = run.root / rel
        if rel not in listed:
            problems.append(f"{path}: not listed in the manifest")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != listed[rel]["sha256"]:
            problems.append(f"{path}: changed since the manifest was written (sha256 differs)")
    return problems
