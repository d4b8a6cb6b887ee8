"""manifest.json: the sha256 of every artifact of a run, with what produced it.

:func:`write_manifest` hashes every file of the run directory except training state
(``checkpoints/``, Lightning's ``logs/``) and temporary files, and records library versions,
the seed (from config.yaml), the git commit of the code and the time. :func:`verify_manifest`
checks files against it, so ``medlens serve`` and ``medlens predict`` can refuse a bundle whose
files changed since training.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable

from medlens.runs import RunDir, read_json, read_yaml, sha256_file, write_json

EXCLUDED_DIRS = {
    "checkpoints",
    "logs",
    "__pycache__",
    "serve",
}  # serve/: audit log and prediction store of `medlens serve`
LIBRARIES = ("medlens", "torch", "lightning", "monai", "numpy", "scikit-learn", "scipy", "safetensors", "pydicom")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


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


def write_manifest(run_dir: str | Path) -> dict:
    """Hash every artifact of ``run_dir`` into ``manifest.json``; returns the manifest."""
    run = RunDir(run_dir)
    seed = None
    if run.config.is_file():
        seed = (read_yaml(run.config) or {}).get("seed")
    files = {
        rel: {"sha256": sha256_file(run.root / rel), "bytes": (run.root / rel).stat().st_size}
        for rel in artifact_files(run.root)
    }
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "command": " ".join(["medlens", *sys.argv[1:]]) if sys.argv else None,
        "files": files,
    }
    write_json(run.manifest, manifest)
    return manifest


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
