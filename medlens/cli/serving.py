"""`medlens predict` (and, below it, `medlens serve`): answers from a trained model bundle."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medlens.cli.common import err_console, print_json
from medlens.errors import MedlensError

MAX_FILE_LINES = 20  # up to this many inputs each written file is named on stderr; above, a progress bar

# --format's values live with the writer (medlens.serving.outputs); imported where used, as every
# serving module is, so that `medlens --help` stays fast


# ============================================================================================
# predict
# ============================================================================================
def predict(
    run: Path = typer.Argument(..., help="Run directory holding the trained model (models/MODEL/ + manifest.json)."),
    inputs: list[Path] = typer.Argument(
        None,
        help="DICOM files, series or study folders, NIfTI, PNG or JPEG files, or a .csv listing them in a 'path' column (or none, with --pacs).",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Model of the run (default: the only one, or the best by validation AUC)."
    ),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also write DIR/<name>.heatmap.png: the heatmap over the input at its own resolution (Grad-CAM; occlusion for classical models). Classification models only.",
    ),
    fmt: str = typer.Option(
        "json",
        "--format",
        "-f",
        help="json | sr (DICOM SR, DICOM input only; a segmentation writes its SEG too) | fhir (FHIR R4 DiagnosticReport) | seg (DICOM SEG, segmentation models, DICOM input only) | nifti (mask with the source's affine, segmentation models).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Write DIR/<name>.json | .sr.dcm (+ .seg.dcm) | .fhir.json | .seg.dcm | .mask.nii.gz (default: json and fhir to stdout; DICOM, NIfTI files and heatmaps to the current folder).",
    ),
    pacs: str = typer.Option(
        None,
        "--pacs",
        help="Predict on studies in this PACS instead of INPUT: AET@HOST:PORT (DICOM C-FIND + C-GET) or a DICOMweb root URL.",
    ),
    patient_id: str = typer.Option(None, "--patient-id", help="With --pacs: the studies of this patient (exact ID)."),
    accession: str = typer.Option(None, "--accession", help="With --pacs: the study with this accession number."),
    study_uid: str = typer.Option(None, "--study-uid", help="With --pacs: the study with this Study Instance UID."),
    send_back: bool = typer.Option(
        False,
        "--send-back",
        help="With --pacs: store each prediction's DICOM SR (a segmentation's SEG and SR) in the PACS (C-STORE or STOW-RS).",
    ),
    aet: str = typer.Option(
        "MEDLENS", "--aet", help="With a DICOM --pacs: our AE title (calling, and C-MOVE destination)."
    ),
    move_port: int = typer.Option(
        0,
        "--move-port",
        help="With a DICOM --pacs: retrieve by C-MOVE to a temporary Storage SCP on this port (the PACS must know --aet at this host and port); default C-GET.",
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Inputs per pass through the network."),
    workers: int = typer.Option(
        None,
        "--workers",
        min=0,
        help="Processes reading and preprocessing inputs beside the network (default: one per core beyond the first, at most 4; 0 reads in the main process).",
    ),
    devices: int = typer.Option(
        1, "--devices", min=1, help="With --out: processes (CPU) or GPUs per machine, under DDP when more than one."
    ),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="With --out: machines, under DDP (Lightning's)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (with --out)."),
) -> None:
    """Predict the finding, its probability and uncertainty for each input (one per DICOM series).

    Inputs that fail are named on stderr, one line each, as they fail (with a count at the end of a batch);
    the others are still predicted. Exit code 2 when any input failed (1 when one failed by a fault of medlens).
    An input outside what the model was made for (its out-of-distribution guard) is answered "not assessed"
    and referred, with the reasons, and named on stderr (exit code 0: the answer is the referral).

    A segmentation model answers with a label map in the input's geometry and its measurements (volume or
    area per segment, vessel fraction): --format seg writes the DICOM SEG, sr the SEG and the TID 1500 SR
    referencing it, nifti the mask with the input's affine; json and fhir hold the measurements.

    With --pacs and --patient-id, --accession or --study-uid: finds the studies in the PACS, retrieves and
    predicts each series the model can read (the others are named on stderr as skipped, with the reason), and
    with --send-back stores each DICOM SR (a segmentation's SEG and SR) into the same study in the PACS.

    With --out DIR the inputs are answered a batch at a time and each one's files are written whole;
    DIR/.predict/ records each answer, so a rerun after a kill skips what is done. --devices N and
    --num-nodes M run the batches under DDP (Lightning's predict loop), each input answered by exactly
    one process.
    """
    from medlens.serving.outputs import FORMATS

    if fmt not in FORMATS:
        raise MedlensError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    if (devices > 1 or num_nodes > 1) and (out is None or pacs):
        raise MedlensError("--devices and --num-nodes need --out DIR (and INPUT paths, not --pacs)")
    source = _pacs_source(inputs, pacs, patient_id, accession, study_uid, send_back, aet, move_port)
    from medlens.serving.predictor import Predictor, find_inputs

    predictor = Predictor.from_run(run, model)
    _check_format(predictor, fmt, explain)
    items, found = (
        find_inputs(inputs) if source is None else _pacs_series(source, predictor, patient_id, accession, study_uid)
    )
    if source is None and out is not None:
        outcome = _predict_folder(
            predictor, items, out, fmt, explain, batch_size, workers, devices, num_nodes, progress
        )
        if outcome is None:  # a rank other than 0 of a DDP run: rank 0 reports
            return
        for problem in found:  # after the batch: DDP's other ranks rerun this command and must stay quiet
            _error(problem)
        failed, done, internal = len(found) + len(outcome.failures), outcome.answered, outcome.internal
        if outcome.skipped:
            _say(f"skipped {outcome.skipped} input(s) already predicted into {out} by an earlier run")
    else:
        for problem in found:
            _error(problem)
        failed, done, internal = _predict_each(predictor, items, source, fmt, out, explain, send_back, batch_size)
        failed += len(found)
    if failed:
        if done + failed > 1:
            err_console.print(f"{failed} input(s) failed, {done} predicted", highlight=False, markup=False)
        raise typer.Exit(1 if internal else 2)


def _error(text: str) -> None:
    from medlens.errors import printable

    err_console.print(f"error: {printable(text)}", highlight=False, markup=False, soft_wrap=True)


def _referred(label: str, result) -> None:
    if result.prediction.out_of_scope:
        _say(f"warning: referred {label}: {result.prediction.abstain_reason}")


def _predict_folder(predictor, items, out, fmt, explain, batch_size, workers, devices, num_nodes, progress):
    """Batch prediction into --out (medlens.serving.batch): resumable, DDP with --devices/--num-nodes."""
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if len(items) > batch_size else 0

    def wrote(item, result, written):
        _referred(item.label, result)
        if len(items) <= MAX_FILE_LINES:
            for path in written:
                _say(f"wrote {path}")

    options = dict(
        fmt=fmt, explain=explain, batch_size=batch_size, workers=workers,
        progress=progress and len(items) > MAX_FILE_LINES, on_result=wrote, on_failure=lambda f: _error(f.text),
    )  # fmt: skip
    if devices * num_nodes > 1:
        from medlens.serving.batch_ddp import predict_ddp

        return predict_ddp(predictor, items, out, devices=devices, num_nodes=num_nodes, **options)
    from medlens.serving.batch import predict_folder

    return predict_folder(predictor, items, out, **options)


def _predict_each(predictor, items, source, fmt, out, explain, send_back, batch_size) -> tuple[int, int, bool]:
    """Inputs answered in order, documents to stdout or files (no --out), or from a PACS; returns
    (failed, predicted, whether a failure was medlens's fault)."""
    from medlens.serving.batch import failure
    from medlens.serving.outputs import write_outputs

    def answers():
        if source is None:
            yield from predictor.predict_items(items, batch_size=batch_size, explain=explain)
            return
        for item in items:
            try:
                yield item, predictor.predict_dicom(source.retrieve(item), explain=explain)
            except Exception as e:  # noqa: BLE001 - a batch goes on past any one series
                yield item, e

    documents, failed, done, internal = [], 0, 0, False
    for item, result in answers():
        try:
            if isinstance(result, Exception):
                raise result
            document, written = write_outputs(result, item.name, fmt=fmt, out=out, explain=explain)
        except Exception as e:  # noqa: BLE001 - a batch goes on past any one input, and names it
            why = failure(item, e)
            failed, internal = failed + 1, internal or why.internal
            _error(why.text)
            continue
        done += 1
        _referred(item.label, result)
        if document is not None:
            documents.append(document)
        for path in written:
            _say(f"wrote {path}")
        if send_back:
            try:
                _send_back(source, result, item.label)
            except Exception as e:  # noqa: BLE001 - the prediction stands; the missing SR is a failure
                what = "SEG and SR" if result.mask is not None else "SR"
                failed += 1
                _error(
                    f"{item.label}: {what} not stored in the PACS: {e if isinstance(e, MedlensError) else type(e).__name__}"
                )
    if documents:
        print_json(documents[0] if len(documents) == 1 else documents)
    return failed, done, internal


def _pacs_source(inputs, pacs, patient_id, accession, study_uid, send_back, aet, move_port):
    """The PACS of `predict --pacs` (None for INPUT paths), after checking that the options go together."""
    from medlens.serving.retrieve import open_pacs

    pacs_options = {
        "--patient-id": patient_id,
        "--accession": accession,
        "--study-uid": study_uid,
        "--send-back": send_back,
        "--move-port": move_port,
    }
    if pacs is None:
        if not inputs:
            raise MedlensError("give INPUT files or folders, or --pacs with --patient-id, --accession or --study-uid")
        given = [flag for flag, value in pacs_options.items() if value]
        if given:
            raise MedlensError(f"{given[0]} needs --pacs")
        return None
    if inputs:
        raise MedlensError("give INPUT files or --pacs, not both")
    if not (patient_id or accession or study_uid):
        raise MedlensError("--pacs needs --patient-id, --accession or --study-uid")
    return open_pacs(pacs, calling_ae_title=aet, move_port=move_port)


def _pacs_series(source, predictor, patient_id, accession, study_uid):
    """(series to predict, []) from the PACS; names the studies found and each skipped series on stderr."""
    from medlens.serving.retrieve import find_series_to_predict

    studies, chosen, skipped = find_series_to_predict(
        source, predictor.accepts_modality, patient_id=patient_id, accession=accession, study_uid=study_uid
    )
    for study in studies:
        _say(
            f"found study {study.study_uid} ({study.date or 'no date'}, {' '.join(study.modalities) or 'no modalities'}) in PACS {source}"
        )
    for reason in skipped:
        _say(f"skipped {reason}")
    if not chosen:
        raise MedlensError(f"no series of the {len(studies)} study(ies) found can go to model '{predictor.model_id}'")
    return chosen, []


def _check_format(predictor, fmt: str, explain: bool) -> None:
    """Refuse, before any input is read, an output the model cannot give."""
    segmenter = predictor.card.task == "segmentation"
    from medlens.serving.outputs import SEGMENTATION_FORMATS

    if fmt in SEGMENTATION_FORMATS and not segmenter:
        raise MedlensError(
            f"--format {fmt} needs a segmentation model; model '{predictor.model_id}' is a {predictor.card.task} classifier"
        )
    if explain and segmenter:
        raise MedlensError(
            f"--explain: segmentation model '{predictor.model_id}' has no heatmap (its mask is the answer: --format seg or nifti)"
        )


def _send_back(source, result, label: str) -> None:
    """Store the DICOM results of one prediction (SR; a segmentation's SEG and SR) in the PACS it came from."""
    source.store(result.dicom_results())
    _say(f"stored the {'SEG and SR' if result.mask is not None else 'SR'} for {label} in PACS {source}")


def _say(text: str) -> None:
    """One progress line on stderr, control characters escaped."""
    from medlens.errors import printable

    err_console.print(printable(text), highlight=False, markup=False, soft_wrap=True)


# ============================================================================================
# serve (the serving-app stage adds its command here; `predict` above stays as it is)
# ============================================================================================
def serve(
    run: Path = typer.Argument(..., help="Run directory holding the trained model (models/MODEL/ + manifest.json)."),
    model: str = typer.Option(
        None, "--model", "-m", help="Model of the run (default: the only one, or the best by validation AUC)."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to bind. The default answers this machine only; any other address needs --api-keys (bind wider only behind TLS).",
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_keys: Path = typer.Option(
        None,
        "--api-keys",
        help="Key file (KEY_ID:SHA256 lines, made with `medlens serve-keys`): every endpoint but /healthz then needs X-API-Key or Authorization: Bearer.",
    ),
    audit_db: str = typer.Option(
        None, "--audit-db", help="Audit log: SQLite path or SQLAlchemy URL (default RUN/serve/audit.sqlite)."
    ),
    max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", help="Largest accepted upload; bigger ones get 413."),
    max_batch: int = typer.Option(
        16,
        "--max-batch",
        min=1,
        help="Concurrent predictions answered in one pass of the network, at most (1: one at a time).",
    ),
    pacs_url: str = typer.Option(
        None,
        "--pacs-url",
        help="DICOMweb root of the PACS (e.g. http://127.0.0.1:8042/dicom-web) for predictions on stored studies.",
    ),
    cors_origin: list[str] = typer.Option(
        None, "--cors-origin", help="Allow this browser origin (repeatable). Default: CORS off."
    ),
    store_dir: Path = typer.Option(
        None,
        "--store-dir",
        help="Folder for recent predictions (default RUN/serve/predictions; holds DICOM headers: keep it private).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn/medlens log level."),
    dicom_port: int = typer.Option(
        0, "--dicom-port", help="Also run the DICOM node (C-ECHO/C-STORE SCP) on this port; 0: off."
    ),
    dicom_aet: str = typer.Option("MEDLENS", "--dicom-aet", help="AE title of the DICOM node."),
    allow_aet: list[str] = typer.Option(
        None, "--allow-aet", help="Calling AE title allowed to send to the node (repeatable). Default: any."
    ),
    pacs_dicom: str = typer.Option(
        None, "--pacs-dicom", help="Where the node sends SR + overlay: AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)."
    ),
    quiet_seconds: float = typer.Option(
        5.0, "--series-quiet-seconds", help="A series counts as complete when no instance arrived for this long."
    ),
    max_associations: int = typer.Option(
        64, "--max-associations", help="DICOM associations open at once; one more is rejected (logged as such)."
    ),
    retention_hours: float = typer.Option(
        24.0,
        "--retention-hours",
        help="Delete received DICOM this long after its series was answered and the results acknowledged.",
    ),
    insecure_no_keys: bool = typer.Option(
        False,
        "--insecure-no-keys",
        help="Serve beyond loopback without API keys (anyone who reaches the port can use the model). Refused otherwise.",
    ),
) -> None:
    """Serve the model: REST API (/docs), web page (/), audit log, and optionally a DICOM node. Stop with Ctrl-C.

    Logs name predictions by id and patients by pseudonym only; set $MEDLENS_PSEUDONYM_KEY to keep
    pseudonyms and hashed audit identifiers stable across restarts.
    """
    import uvicorn

    from medlens.serving.app import create_app
    from medlens.serving.heap import cap_malloc_arenas
    from medlens.serving.logsafe import configure_logging
    from medlens.serving.settings import ServeSettings

    cap_malloc_arenas()

    settings = ServeSettings(
        run_dir=run,
        model=model,
        host=host,
        port=port,
        api_keys_file=api_keys,
        audit_url=audit_db,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        pacs_url=pacs_url,
        cors_origins=list(cors_origin or []),
        store_dir=store_dir,
    )
    if not (settings.key_hashes() or insecure_no_keys or _is_loopback(host)):
        raise MedlensError(
            f"--host {host} reaches beyond this machine: give --api-keys (or --insecure-no-keys to serve it open)"
        )
    # One handler for medlens and uvicorn alike: UIDs redacted, control characters escaped, library warnings dropped.
    configure_logging(log_level)
    application = create_app(settings)
    keys = "API keys required" if settings.key_hashes() else "no API keys (open to anyone who can reach the port)"
    err_console.print(
        f"medlens serving {application.state.service.predictor.model_id} on http://{host}:{port} ({keys})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    node = _start_dicom_node(
        application.state.service,
        settings,
        dicom_port,
        dicom_aet,
        allow_aet,
        pacs_dicom,
        quiet=quiet_seconds,
        max_associations=max_associations,
        retention_hours=retention_hours,
    )
    try:
        uvicorn.run(
            application, host=host, port=port, log_level=log_level.lower(), log_config=None, server_header=False
        )
    finally:
        if node is not None:
            node.stop()


def _is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _parse_pacs(text: str):
    """AET@HOST:PORT -> PacsTarget, with a one-line error for anything else."""
    from medlens.serving.pacs import PacsTarget

    return PacsTarget.parse(text, option="--pacs-dicom")


def _start_dicom_node(
    service,
    settings,
    port: int,
    aet: str,
    allow: list[str] | None,
    pacs: str | None,
    *,
    quiet: float,
    max_associations: int,
    retention_hours: float,
):
    """The DICOM node shares the REST service's predictor and audit log; None when --dicom-port is 0."""
    if not port:
        if pacs:
            raise MedlensError("--pacs-dicom needs --dicom-port (the DICOM node sends results there)")
        return None
    from medlens.serving.dicom_node import DicomNode

    target = _parse_pacs(pacs) if pacs else None
    storage = Path(settings.run_dir) / "serve" / "dicom"
    node = DicomNode(
        ae_title=aet,
        host=settings.host,
        port=port,
        allowed_calling_aets=set(allow) if allow else None,
        analyze=lambda datasets: service.network.run(service.predictor.predict_dicom, datasets, explain=True),
        pacs=target,
        storage_dir=storage,
        audit=service.audit,
        quiet_period=quiet,
        maximum_associations=max_associations,
        retention_hours=retention_hours,
    )
    node.start()
    err_console.print(
        f"DICOM node {aet} listening on {settings.host}:{node.port}"
        + (f", results to {pacs}" if pacs else ", results kept locally (no --pacs-dicom)"),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return node


def serve_keys(
    keys_file: Path = typer.Argument(..., help="Key file to append to (created with mode 0600)."),
    key_id: str = typer.Option(None, "--id", help="Name of the key, recorded in the audit log (default keyN)."),
) -> None:
    """Create an API key: prints it once on stdout and stores only its sha256 in KEYS_FILE.

    Use the file with `medlens serve RUN --api-keys KEYS_FILE`; send the key as X-API-Key or
    Authorization: Bearer. Remove a key by deleting its line.
    """
    from medlens.serving.settings import create_key

    name, key = create_key(keys_file, key_id)
    err_console.print(
        f"key '{name}' added to {keys_file} (only its sha256 is stored; this is the only time it is shown)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    typer.echo(key)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `medlens` app."""
    app.command(name="predict")(predict)
    app.command(name="serve")(serve)
    app.command(name="serve-keys")(serve_keys)
