"""`medlens report RUN`: one self-contained HTML file from the artifacts of a run, without retraining.

:func:`build_report` reads what the earlier stages wrote (``comparison.json``, ``fingerprint.json``,
``models/*/model.json``, ``metrics.json``, ``config.yaml``, ``splits.json``, ``manifest.json``,
``figures/``), draws the figures with matplotlib, embeds every image as a base64 ``data:`` URI and
renders ``templates/report.html.j2`` (CSS inline, no script, no web font) to ``RUN/report.html``.

The data audit and the sample montage need the source itself: when ``audit.json`` or
``figures/montage.png`` is absent and the source can be opened here, they are computed once and
written into the run (so later rebuilds are quick); otherwise those sections say why they are
missing. Every section degrades the same way: a missing artifact gives "not available: <reason>",
never a crash. The report is hand-written (no report library fits a clinical comparison of
models), with Jinja2 for the page and matplotlib for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.reporting import sections
from medlens.reporting.ensembles import SECTION as ENSEMBLES_SECTION
from medlens.reporting.external import SECTION as EXTERNAL_SECTION
from medlens.reporting.segmentation import SECTION as SEGMENTATION_SECTION
from medlens.reporting.shortcuts import SECTION as SHORTCUTS_SECTION
from medlens.reporting.subgroups import SECTION as SUBGROUPS_SECTION
from medlens.runs import RunDir, atomic_write_bytes, read_json, read_yaml, write_json

TEMPLATE = "report.html.j2"


@dataclass
class Artifacts:
    """Everything the report reads from a run directory (None where a file is absent)."""

    run: RunDir
    comparison: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    splits: dict[str, list[str]] | None = None
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    montage: bytes | None = None
    notes: dict[str, str] = field(default_factory=dict)  # why an artifact is absent, by name
    written: list[Path] = field(default_factory=list)  # files the report added to the run

    @property
    def order(self) -> list[str]:
        """Model names in display order (comparison.json's, else classical first, then by name)."""
        if self.comparison and self.comparison.get("order"):
            return [n for n in self.comparison["order"] if n in self.comparison.get("models", {})]
        return sorted(self.infos, key=lambda n: (self.infos[n].get("kind") != "classical", n))

    @property
    def source(self) -> str | None:
        for obj in (self.comparison, self.fingerprint, self.config, *self.infos.values()):
            if obj and obj.get("source"):
                return str(obj["source"])
        return None


def build_report(
    run_dir: str | Path, *, use_source: bool = True, out: str | Path | None = None, dataset: Any = None
) -> Path:
    """Write the HTML report of ``run_dir`` (default ``RUN/report.html``) and return its path.

    ``use_source``: open the run's source to compute a missing ``audit.json`` / montage;
    ``dataset``: that source already opened by the caller (it is then not opened again).
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MedlensError("no such run directory", run.root)
    arts = load_artifacts(run, use_source=use_source, dataset=dataset)
    if not arts.infos and not arts.comparison:
        raise MedlensError("nothing to report: no comparison.json and no trained model (models/*/model.json)", run.root)
    _record_in_manifest(run, arts.written)  # audit.json / montage the report just added
    context = sections.report_context(
        arts,
        task_sections={"segmentation": SEGMENTATION_SECTION},
        optional_sections=[ENSEMBLES_SECTION, SUBGROUPS_SECTION, EXTERNAL_SECTION, SHORTCUTS_SECTION],
    )
    context["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render(context)
    path = Path(out) if out is not None else run.report
    atomic_write_bytes(path, page.encode("utf-8"))
    _record_in_manifest(run, [path])
    return path


def _record_in_manifest(run: RunDir, paths: list[Path]) -> None:
    """Record the files the report wrote inside the run (and only those) as the ``report`` stage,
    so a rebuilt report never re-approves a changed model file."""
    if run.manifest.is_file():
        from medlens.manifest import record_files

        record_files(run.root, paths, "report")


def render(context: dict[str, Any]) -> str:
    """The report page from its context (Jinja2, autoescaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(TEMPLATE).render(**context)


# -- reading -----------------------------------------------------------------------------------
def load_artifacts(run: RunDir, *, use_source: bool = True, dataset: Any = None) -> Artifacts:
    """Read every artifact the report uses; a malformed file is a one-line MedlensError."""
    arts = Artifacts(run=run)
    arts.comparison = _json(run.comparison, arts, "comparison")
    arts.fingerprint = _json(run.fingerprint, arts, "fingerprint")
    arts.manifest = _json(run.manifest, arts, "manifest")
    if run.config.is_file():
        try:
            arts.config = read_yaml(run.config) or {}
        except Exception as e:  # yaml.YAMLError and friends: name the file, one line
            raise MedlensError(f"config.yaml is not valid YAML ({type(e).__name__})", run.config) from None
    splits = _json(run.splits, arts, "splits")
    if isinstance(splits, dict):
        inner = splits.get("splits", splits)
        arts.splits = {k: v for k, v in inner.items() if isinstance(v, list)}
    for name in run.model_names():
        model = run.model(name)
        arts.infos[name] = _json(model.info, arts, f"model.json of {name}") or {}
        arts.metrics[name] = _json(model.metrics, arts, f"metrics.json of {name}") or {}
    arts.audit = _json(run.audit, arts, "audit")
    if run.montage.is_file():
        arts.montage = run.montage.read_bytes()
    if (arts.audit is None or arts.montage is None) and use_source:
        _from_source(arts, dataset)
    elif arts.audit is None or arts.montage is None:
        reason = "the source was not opened (--no-source)"
        arts.notes.setdefault("audit", reason)
        arts.notes.setdefault("montage", reason)
    return arts


def _json(path: Path, arts: Artifacts, what: str) -> Any:
    if not path.is_file():
        arts.notes[what] = f"{path.name} is missing"
        return None
    try:
        return read_json(path)
    except ValueError as e:
        raise MedlensError(f"not valid JSON ({e})", path) from None


def _from_source(arts: Artifacts, dataset: Any = None) -> None:
    """Compute a missing audit.json and montage from the run's source (``dataset`` when the caller
    opened it already) and keep them in the run."""
    source = arts.source
    if source is None:
        arts.notes["audit"] = arts.notes["montage"] = "the run does not record its source"
        return
    try:
        from medlens.data.sources import open_source

        seed = int((arts.config or {}).get("seed") or 0)
        dataset = dataset if dataset is not None else open_source(source, skip_bad=True, seed=seed)
    except (MedlensError, OSError, ValueError) as e:
        arts.notes["audit"] = arts.notes["montage"] = f"the source {source} cannot be opened here ({_one_line(e)})"
        return
    if arts.audit is None:
        try:
            from medlens.data.audit import audit_dataset

            arts.audit = audit_dataset(dataset, show_progress=False)
            write_json(arts.run.audit, arts.audit)
            arts.written.append(arts.run.audit)
        except (MedlensError, OSError, ValueError) as e:
            arts.notes["audit"] = f"the audit of {source} failed ({_one_line(e)})"
    if arts.montage is None:
        try:
            from medlens.data.montage import save_montage

            arts.montage = save_montage(dataset, arts.run.montage, per_class=6).read_bytes()
            arts.written.append(arts.run.montage)
        except (MedlensError, OSError, ValueError) as e:
            arts.notes["montage"] = f"no montage of {source} ({_one_line(e)})"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
