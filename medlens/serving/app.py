"""The REST API and web page of `medlens serve`: :func:`create_app` builds the FastAPI app.

Endpoints (OpenAPI schema at ``/openapi.json``, docs at ``/docs``, no ``/redoc``):

* ``POST /v1/predictions`` — multipart upload (field ``file``: DICOM, NIfTI, PNG or JPEG), a raw
  body (``Content-Type: application/dicom``, ``image/png`` ...), or JSON
  ``{"study_instance_uid": ..., "series_instance_uid": ...?}`` fetched from the PACS over DICOMweb
  WADO-RS. Query ``explain=true`` adds a heatmap. Answers the prediction as JSON with its ``id``.
* ``GET /v1/predictions`` (recent), ``/v1/predictions/{id}``, ``.../heatmap.png`` (``?alpha=``;
  ``?layer=heatmap`` for the colour layer alone), ``.../image.png`` (both at the input's own
  resolution: the heatmap is mapped onto the source image), ``.../fhir`` (FHIR R4
  DiagnosticReport), ``.../sr`` (DICOM SR; 409 when the input was not DICOM).
* Segmentations (model card task "segmentation"): the JSON holds ``measurements``, ``slices``
  (1 for one image), ``slice`` (shown first) and ``segments`` (label, colour);
  ``.../image.png?slice=k`` is slice ``k`` of a volume, ``.../mask.png?slice=k`` the label map in the
  segments' colours (transparent background; ``?alpha=`` blends it over the image),
  ``.../mask.nii.gz`` the label map with the source's affine, ``.../seg`` the DICOM SEG (DICOM
  input), ``.../sr`` the TID 1500 SR referencing that SEG, ``.../fhir`` one Observation per measurement.
* ``GET /v1/models``, ``GET /v1/pacs/studies`` (QIDO-RS, when a PACS is configured),
  ``GET /healthz`` (liveness, never needs a key), ``GET /readyz`` (model, audit log and store usable).
* ``/`` and ``/static/*``: the web page (plain HTML + JS; it holds no data and asks for the key).

Safety (:mod:`medlens.serving.guard`): API keys checked (sha256, constant time) on every endpoint
but ``/healthz`` and the static page when keys are configured, before the body is read; a body over
the limit gets 413 from its Content-Length, or once a streamed body passes it, and is not read
further; JSON bodies are at most 64 KB and may not nest too deeply (400); content is sniffed (not an
image: 415); every error is JSON ``{"error": CODE, "detail": TEXT}`` and never a 5xx for bad input.
Every answer carries security headers (CSP, nosniff, DENY, no-referrer) and, except static files,
``Cache-Control: no-store``; ``/docs`` is served from the installed package (no CDN). Client-chosen
names (file names, ids) are escaped (:func:`~medlens.serving.logsafe.printable`) before they reach a
log or an answer. Every prediction is written to the audit log (durable commit)
before its response is sent; if that fails the prediction is not returned (503). Logs name
predictions by id, inputs by hash prefix and patients by pseudonym only.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlens import __version__
from medlens.errors import MedlensError
from medlens.inference.geometry import DeferredView
from medlens.serving.audit import AuditLog, hash_identifier
from medlens.serving.batching import GreedyBatcher
from medlens.serving.docs import add_docs
from medlens.serving.guard import GuardMiddleware, SecurityHeaders, json_error
from medlens.serving.logsafe import printable
from medlens.serving.outputs import dicom_bytes
from medlens.serving.pacs import NotInPacsError, PacsError, PacsUnreachableError
from medlens.serving.retrieve import DicomWebPacs
from medlens.serving.settings import ServeSettings
from medlens.serving.store import PredictionStore, StoredMask, StoredPrediction

log = logging.getLogger("medlens.serve")

STATIC_DIR = Path(__file__).parent / "static"
RAW_TYPES = ("application/dicom", "application/octet-stream", "image/", "application/gzip", "application/x-gzip")
# Libraries whose INFO/DEBUG lines name DICOM UIDs or URLs holding them (highdicom: "copy attributes of
# dataset UID"; dicomweb_client and urllib3: the WADO-RS URL): quieted to WARNING so that logs hold pseudonyms only.
CHATTY_LOGGERS = (
    "highdicom",
    "pydicom",
    "httpx",
    "httpcore",
    "dicomweb_client",
    "urllib3",
    "PIL",
    "multipart",
    "python_multipart",
)
SEGMENTATION = "segmentation"  # the model card's task of segmentation models
AUDIT_GROUP = 64  # audit rows committed together, at most
JSON_LIMIT = 64 * 1024  # a PACS study request is a few UIDs: a bigger JSON body is refused before parsing


class ApiError(Exception):
    """An error answered as JSON ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any):
        self.status, self.code, self.detail, self.extra = status, code, detail, extra
        super().__init__(detail)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail, **self.extra}, status_code=self.status)


# ------------------------------------------------------------------------------------------------
# the service: predictor + audit log + store
# ------------------------------------------------------------------------------------------------
class Service:
    """What the endpoints share: the loaded model, the audit log, the store, the PACS client."""

    def __init__(self, settings: ServeSettings, predictor=None):
        from medlens.serving.predictor import PSEUDONYM_KEY_ENV, Predictor

        self.settings = settings
        self.key = settings.pseudonym_key or os.environ.get(PSEUDONYM_KEY_ENV) or secrets.token_hex(16)
        if not (settings.pseudonym_key or os.environ.get(PSEUDONYM_KEY_ENV)):
            log.warning(
                "no pseudonym key set ($%s): hashed identifiers cannot be linked across restarts", PSEUDONYM_KEY_ENV
            )
        # The network thread: every torch call of the service runs on it (loading, preprocessing,
        # forward passes, heatmaps), so that torch keeps one OpenMP team (see medlens.serving.batching);
        # concurrent predictions without heatmap share one pass of the network.
        self.network = GreedyBatcher(
            self._answer, max_batch=settings.max_batch, own_thread=True, name="medlens-network"
        )
        try:
            self.predictor = predictor or self.network.run(
                Predictor.from_run,
                settings.run_dir,
                settings.model,
                uncertainty=settings.uncertainty,
                pseudonym_key=self.key,
            )
        except BaseException:
            self.network.close()  # the model did not load: no thread left behind
            raise
        self.audit = AuditLog(settings.resolved_audit_url())
        self.store = PredictionStore(
            settings.resolved_store_dir(), memory=settings.store_memory, disk=settings.store_disk
        )
        # one commit at a time: concurrent rows share a durable commit, and SQLite sees one writer at a time
        self.audit_writer = GreedyBatcher(self._commit_audit_rows, max_batch=AUDIT_GROUP)
        self.pacs = DicomWebPacs(settings.pacs_url, timeout=settings.pacs_timeout) if settings.pacs_url else None

    # -- predicting ---------------------------------------------------------------------------------
    def predict_bytes(self, data: bytes, filename: str, explain: bool, key_id: str | None, client: str | None) -> dict:
        from medlens.serving.predictor import UnsupportedMediaError

        if not data:
            raise ApiError(400, "empty", "the upload is empty", file=filename)
        try:
            result = self.network((self.predictor.read_bytes(data, filename), explain))
        except UnsupportedMediaError as e:
            raise ApiError(415, "unsupported_media", printable(e.problem, None), file=filename) from None
        except MedlensError as e:
            raise ApiError(422, "bad_input", printable(e.problem, None), file=filename) from None
        except Exception as e:  # noqa: BLE001
            # Corrupt content that the readers (pydicom, nibabel, Pillow) did not turn into a MedlensError,
            # e.g. pydicom's BytesLengthException or nibabel's HeaderDataError: the input's fault, a 4xx.
            log.warning("unreadable upload (%s.%s)", type(e).__module__, type(e).__name__)
            raise ApiError(
                422, "unreadable", f"the file could not be read as an image ({type(e).__name__})", file=filename
            ) from None
        return self.finish(result, [filename], key_id, client)

    def predict_study(
        self, study_uid: str, series_uid: str | None, explain: bool, key_id: str | None, client: str | None
    ) -> dict:
        if self.pacs is None:
            raise ApiError(400, "no_pacs", "no PACS configured (start the service with --pacs-url)")
        datasets = _from_pacs(lambda: self.pacs.fetch_image_series(study_uid, series_uid))
        if not datasets:
            raise ApiError(422, "no_images", "the study holds no image instances")
        try:
            result = self.network.run(self.predictor.predict_dicom, datasets, explain=explain)
        except MedlensError as e:
            raise ApiError(422, "bad_input", e.problem) from None
        except Exception as e:  # noqa: BLE001 - as for uploads: unreadable content is a 4xx
            log.warning("unreadable PACS study (%s.%s)", type(e).__module__, type(e).__name__)
            raise ApiError(422, "unreadable", f"the study could not be read as an image ({type(e).__name__})") from None
        return self.finish(result, [study_uid, series_uid or ""], key_id, client)

    def finish(self, result, names: list[str], key_id: str | None, client: str | None) -> dict:
        """Audit (durably) and store one prediction; returns its JSON answer."""
        pred = result.prediction
        src = pred.source
        identifiers = [
            n for n in [*names, src.study_instance_uid, src.series_instance_uid, *src.sop_instance_uids] if n
        ]
        try:
            self.audit_writer(
                dict(
                    prediction_id=pred.id,
                    input_hash=src.input_sha256,
                    input_ids_hashed=[hash_identifier(n, self.key) for n in identifiers],
                    model=pred.model,
                    model_sha256=pred.model_sha256,
                    output=self.audit_output(pred),
                    key_id=key_id,
                    client=client,
                )
            )
        except Exception as e:  # noqa: BLE001 - whatever the database says, the prediction must not go out
            log.error("audit log write failed (%s): prediction %s withheld", type(e).__name__, pred.id)
            raise ApiError(
                503, "audit_unavailable", "the audit log could not record the prediction; it was not returned"
            ) from None
        view = result.view  # a deferred picture is drawn after the answer (by the store's writer)
        display = view if view is None or isinstance(view, DeferredView) else view.image
        heat = None if view is None else view.heatmap
        answer = None
        try:
            mask = self.network.run(_stored_mask, result) if result.mask is not None else None
            if mask is not None and mask.slices is not None:
                display = mask.slices[mask.shown]  # image.png: the slice the page shows first
            answer = self.store.put(pred, display, result.sources, heatmap=heat, mask=mask).summary()
        except Exception as e:  # noqa: BLE001 - recorded already: answer it, even if the store cannot keep it
            log.warning("prediction %s not kept in the store (%s)", pred.id, type(e).__name__)
        log.info(
            "prediction %s: model %s, input %s, patient %s, finding %s p=%.3f%s",
            pred.id,
            pred.model,
            src.input_sha256[:12],
            src.patient_pseudonym or "-",
            pred.finding,
            pred.confidence,
            " ABSTAIN" if pred.abstain else "",
        )
        return _with_links(answer or pred.to_json())

    def _answer(self, requests: Sequence[tuple[Any, bool]]) -> list:
        """On the network thread: (input as read, explain) -> its answer. Inputs are checked and
        preprocessed here; those without heatmap are answered in one pass, each heatmap alone."""
        prepared = [self.predictor.prepare(inp) for inp, _ in requests]
        plain = iter(self.predictor.answer([p for p, (_, explain) in zip(prepared, requests) if not explain]))
        return [
            self.predictor.answer([p], explain=True)[0] if explain else next(plain)
            for p, (_, explain) in zip(prepared, requests)
        ]

    def _commit_audit_rows(self, rows: list[dict]) -> list[None]:
        self.audit.record_many(list(rows))
        return [None] * len(rows)

    def close(self) -> None:
        """Finish queued work and stop the batch threads (the app's shutdown)."""
        self.network.close()
        self.audit_writer.close()
        self.store.close()

    def audit_output(self, pred) -> dict:
        """The prediction as the audit log keeps it: source identifiers hashed, never raw."""
        out = pred.to_json()
        src = dict(out["source"])
        for k in ("study_instance_uid", "series_instance_uid"):
            if src.get(k):
                src[k] = hash_identifier(src[k], self.key)
        src["sop_instance_uids"] = [hash_identifier(u, self.key) for u in src.get("sop_instance_uids") or []]
        out["source"] = src
        return out

    # -- reading back --------------------------------------------------------------------------------
    def entry(self, prediction_id: str) -> StoredPrediction:
        entry = self.store.get(prediction_id)
        if entry is None:
            raise ApiError(
                404, "not_found", f"no prediction '{printable(prediction_id, 64)}' (unknown, or no longer kept)"
            )
        return entry

    def ready(self) -> dict:
        checks = {"model": self.predictor is not None}
        try:
            self.audit.recent(1)
            checks["audit_log"] = True
        except Exception:  # noqa: BLE001
            checks["audit_log"] = False
        root = self.store.root
        checks["store"] = root is None or os.access(root, os.W_OK)
        return checks


def _from_pacs(work):
    """``work()`` (a DICOMweb request), with PACS problems as API errors (404, 502, 422 when too large)."""
    try:
        return work()
    except NotInPacsError:
        raise ApiError(404, "not_in_pacs", "the PACS has no such study or series") from None
    except PacsUnreachableError as e:
        raise ApiError(502, "pacs_unreachable", e.problem) from None
    except PacsError as e:
        raise ApiError(502, "pacs_error", e.problem) from None
    except MedlensError as e:  # over the size limits
        raise ApiError(422, "bad_input", e.problem) from None


class AnswerResponse(JSONResponse):
    """A prediction's JSON, rendered straight from its plain dict (FastAPI's jsonable_encoder walk of
    the answer was a tenth of the service's GIL time under load); anything json cannot render
    still goes through jsonable_encoder."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except TypeError:
            return super().render(jsonable_encoder(content))


def _with_links(d: dict) -> dict:
    base = f"/v1/predictions/{d['id']}"
    d["links"] = {
        "self": base,
        "heatmap": f"{base}/heatmap.png",
        "image": f"{base}/image.png",
        "fhir": f"{base}/fhir",
        "sr": f"{base}/sr",
    }
    if d.get("task") == SEGMENTATION:
        del d["links"]["heatmap"]
        d["links"].update(mask=f"{base}/mask.png", mask_nifti=f"{base}/mask.nii.gz", seg=f"{base}/seg")
    return d


def _stored_mask(result) -> StoredMask | None:
    """A segmentation result's label map for the store, with every slice's display image of a volume."""
    from medlens.serving.overlay import display_slices

    labels = result.mask
    if labels is None:
        return None
    volume = labels.ndim == 3 and labels.shape[0] > 1
    slices = display_slices(result.model_input, labels.shape) if volume else None
    return StoredMask(labels, slices, result.spacing, result.affine)


def _result_of(entry: StoredPrediction):
    """The stored prediction as a :class:`~medlens.serving.predictor.PredictionResult` (sources are headers
    only), so that its SEG and NIfTI mask are made by the same code as ``medlens predict``'s."""
    from medlens.serving.predictor import PredictionResult

    mask = entry.mask
    if mask is None:
        raise ApiError(
            404, "no_mask", f"model '{entry.prediction.model}' is not a segmentation model: the prediction has no mask"
        )
    return PredictionResult(
        entry.prediction, list(entry.sources), mask=mask.labels, spacing=mask.spacing, affine=mask.affine
    )


# ------------------------------------------------------------------------------------------------
# renderings
# ------------------------------------------------------------------------------------------------
def _png_layers(entry: StoredPrediction) -> tuple[bytes, bytes | None]:
    from medlens.serving.overlay import overlay_png

    image, heat = entry.planes()  # the source's resolution: the page shows the image at its natural size
    if image is None:
        raise MedlensError("the prediction has no display image")

    def make():
        grey = overlay_png(image, None)
        layer = overlay_png(image, heat, alpha=1.0) if heat is not None else None
        return grey, layer

    return entry.rendered("png_layers", make)


def _blend_png(grey_png: bytes, layer_png: bytes, alpha: float) -> bytes:
    """(1 - alpha) * grey + alpha * colour layer, as :func:`medlens.serving.overlay.overlay_rgb` blends
    (where the layer is transparent, the grey image stays)."""
    from PIL import Image

    grey, layer = Image.open(io.BytesIO(grey_png)).convert("RGBA"), Image.open(io.BytesIO(layer_png)).convert("RGBA")
    blended = Image.composite(Image.blend(grey, layer, alpha), grey, layer.getchannel("A"))
    buf = io.BytesIO()
    blended.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _grey_png(entry: StoredPrediction, index: int) -> bytes:
    """Slice ``index`` of a segmented volume (0: the display image of any other prediction) as a grey PNG."""
    from medlens.serving.overlay import overlay_png

    image, _ = _plane(entry, index)
    return overlay_png(image, None)


def _mask_png(entry: StoredPrediction, index: int) -> bytes:
    """Slice ``index`` of the label map in the segments' colours, on the display image's pixels."""
    from medlens.serving.overlay import mask_layer, png_bytes

    image, _ = _plane(entry, index)
    return png_bytes(mask_layer(entry.mask.plane(index), image.shape))


def _plane(entry: StoredPrediction, index: int):
    try:
        image, heat = entry.planes(index)
    except MedlensError as e:
        raise ApiError(422, "bad_request", e.problem) from None
    if image is None:
        raise ApiError(404, "no_image", "the prediction has no display image")
    return image, heat


def _seg(entry: StoredPrediction):
    """The prediction's DICOM SEG, made once (the SR references this very SEG)."""
    return entry.rendered("seg", lambda: _result_of(entry).dicom_seg())


def _sr_bytes(entry: StoredPrediction) -> bytes:
    from medlens.serving.sr import segmentation_report, structured_report

    def make():
        if entry.mask is not None:
            return dicom_bytes(segmentation_report(entry.prediction, _seg(entry), entry.sources))
        return dicom_bytes(structured_report(entry.prediction, entry.sources))

    return entry.rendered("sr", make)


def _need_dicom(entry: StoredPrediction, what: str) -> None:
    if not entry.sources:
        raise ApiError(
            409, "not_dicom", f"the input was {entry.prediction.source.kind}, not DICOM: a {what} needs DICOM input"
        )


def _dicom_answer(entry: StoredPrediction, what: str, code: str, make, name: str) -> Response:
    """``make()``'s DICOM bytes as a download, or the one-line reason why the input's headers cannot give them."""
    try:
        data = make()
    except MedlensError as e:
        raise ApiError(422, code, e.problem) from None
    except Exception as e:  # noqa: BLE001 - source headers highdicom cannot use (e.g. a corrupt upload)
        log.warning("%s for prediction %s failed (%s)", what, entry.prediction.id, type(e).__name__)
        raise ApiError(422, code, f"no {what} can be built from the input's headers ({type(e).__name__})") from None
    return Response(
        data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{entry.prediction.id}-{name}.dcm"'},
    )


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------
UPLOAD_SCHEMA = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "DICOM, NIfTI, PNG or JPEG"},
                    "explain": {"type": "boolean"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["study_instance_uid"],
                "properties": {
                    "study_instance_uid": {"type": "string"},
                    "series_instance_uid": {"type": "string"},
                    "explain": {"type": "boolean"},
                },
            }
        },
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def create_app(settings: ServeSettings, *, predictor=None) -> FastAPI:
    """The FastAPI app for ``settings`` (loads and verifies the model bundle; opens the audit log)."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    service = Service(settings, predictor)
    app = FastAPI(
        title="medlens",
        version=__version__,
        description="AI findings on medical images, with heatmap, uncertainty, DICOM SR and FHIR. AI results are to be confirmed by a clinician.",
        docs_url=None,
        redoc_url=None,
    )
    docs_csp = add_docs(app, "medlens")
    app.state.service = service
    app.state.settings = settings
    app.router.on_shutdown.append(service.close)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return json_error(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return json_error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    # -- health ------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="Liveness (no key needed)")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: model loaded, audit log and store usable")
    def readyz():
        checks = service.ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    # -- models --------------------------------------------------------------------------------------
    @app.get("/v1/models", tags=["models"], summary="The served model")
    def models():
        p = service.predictor
        return [
            {
                "id": p.model_id,
                "sha256": p.model_sha256,
                "kind": p.card.kind,
                "task": p.card.task,
                "class_names": list(p.card.class_names),
                "dims": p.card.dims,
                "img_size": p.card.img_size,
                "modality": p.card.modality,
                "uncertainty_method": p.bundle.abstention.method,
            }
        ]

    # -- predictions ---------------------------------------------------------------------------------
    @app.post(
        "/v1/predictions",
        tags=["predictions"],
        summary="Predict for an uploaded image or a PACS study",
        openapi_extra={"requestBody": UPLOAD_SCHEMA},
    )
    async def create_prediction(request: Request, explain: bool = False):
        key_id = request.state.key_id
        client = request.client.host if request.client else None
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=5)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "no_file", "a multipart upload needs a file in the field 'file'")
            data = await upload.read()
            filename = printable(upload.filename or "upload")
            explain = explain or _truthy(form.get("explain", ""))
            await form.close()
            work: tuple = (service.predict_bytes, data, filename, explain, key_id, client)
        elif ctype.startswith("application/json"):
            raw = await request.body()
            if len(raw) > JSON_LIMIT:
                raise ApiError(413, "too_large", f"a JSON request is at most {JSON_LIMIT // 1024} KB")
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nested too deeply
                raise ApiError(400, "bad_json", "the body is not valid JSON (or nested too deeply)") from None
            uid = body.get("study_instance_uid") if isinstance(body, dict) else None
            if (
                not isinstance(uid, str)
                or not uid.strip()
                or len(uid) > 64
                or not all(c.isdigit() or c == "." for c in uid)
            ):
                raise ApiError(
                    422, "bad_request", "JSON body needs 'study_instance_uid': a DICOM UID (digits and dots)"
                )
            series = body.get("series_instance_uid")
            if series is not None and (
                not isinstance(series, str) or len(series) > 64 or not all(c.isdigit() or c == "." for c in series)
            ):
                raise ApiError(422, "bad_request", "'series_instance_uid' must be a DICOM UID")
            explain = explain or bool(body.get("explain"))
            work = (service.predict_study, uid.strip(), series, explain, key_id, client)
        elif ctype.startswith(RAW_TYPES) or not ctype:
            data = await request.body()
            filename = printable(request.headers.get("x-filename", "upload"))
            work = (service.predict_bytes, data, filename, explain, key_id, client)
        else:
            raise ApiError(
                415,
                "unsupported_media",
                f"unsupported Content-Type '{printable(ctype.split(';')[0], 100)}': send multipart/form-data, "
                "application/json (PACS study) or the image bytes",
            )
        return AnswerResponse(await run_in_threadpool(*work))

    @app.get("/v1/predictions", tags=["predictions"], summary="Recent predictions, newest first")
    def recent(limit: int = 20):
        return [_with_links(d) for d in service.store.recent(max(1, min(limit, 200)))]

    @app.get("/v1/predictions/{prediction_id}", tags=["predictions"], summary="One prediction")
    def get_prediction(prediction_id: str):
        entry = service.entry(prediction_id)
        return _with_links(entry.summary())

    @app.get(
        "/v1/predictions/{prediction_id}/heatmap.png",
        tags=["predictions"],
        summary="Heatmap over the image (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def heatmap(prediction_id: str, alpha: float = 0.4, layer: str | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ApiError(422, "bad_request", "alpha must be in [0, 1]")
        entry = service.entry(prediction_id)
        if entry.heatmap is None:
            raise ApiError(
                404, "no_heatmap", "this prediction was made without a heatmap (request it with explain=true)"
            )
        grey, colour = _png_layers(entry)
        if layer == "heatmap":
            return Response(colour, media_type="image/png")
        png = (
            entry.rendered(f"overlay{alpha:.3f}", lambda: _blend_png(grey, colour, alpha))
            if alpha == 0.4
            else _blend_png(grey, colour, alpha)
        )
        return Response(png, media_type="image/png")

    @app.get(
        "/v1/predictions/{prediction_id}/image.png",
        tags=["predictions"],
        summary="The input image at its own resolution (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def image(prediction_id: str, slice: int | None = None):
        entry = service.entry(prediction_id)
        if slice is None:
            return Response(_png_layers(entry)[0], media_type="image/png")
        return Response(_grey_png(entry, slice), media_type="image/png")  # not cached: one per slice

    @app.get(
        "/v1/predictions/{prediction_id}/mask.png",
        tags=["predictions"],
        summary="A segmentation's label map in the segments' colours (PNG; ?slice=k of a volume)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"description": "not a segmentation"}},
    )
    def mask_png(prediction_id: str, slice: int | None = None, alpha: float | None = None):
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ApiError(422, "bad_request", "alpha must be in [0, 1]")
        entry = service.entry(prediction_id)
        _result_of(entry)  # 404 unless a segmentation
        index = entry.mask.shown if slice is None else slice
        layer = _mask_png(entry, index)  # not cached: one per slice, made in milliseconds
        if alpha is None:
            return Response(layer, media_type="image/png")
        return Response(_blend_png(_grey_png(entry, index), layer, alpha), media_type="image/png")

    @app.get(
        "/v1/predictions/{prediction_id}/mask.nii.gz",
        tags=["predictions"],
        summary="A segmentation's label map as NIfTI with the source's affine",
        response_class=Response,
        responses={200: {"content": {"application/gzip": {}}}, 404: {"description": "not a segmentation"}},
    )
    def mask_nifti(prediction_id: str):
        entry = service.entry(prediction_id)
        result = _result_of(entry)
        try:
            data = entry.rendered("nifti", lambda: gzip.compress(result.mask_nifti().to_bytes(), mtime=0))
        except MedlensError as e:
            raise ApiError(422, "nifti_failed", e.problem) from None
        return Response(
            data,
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{prediction_id}-mask.nii.gz"'},
        )

    @app.get(
        "/v1/predictions/{prediction_id}/seg",
        tags=["predictions"],
        summary="DICOM SEG of a segmentation (DICOM input only)",
        response_class=Response,
        responses={
            200: {"content": {"application/dicom": {}}},
            404: {"description": "not a segmentation"},
            409: {"description": "input was not DICOM"},
        },
    )
    def seg(prediction_id: str):
        entry = service.entry(prediction_id)
        _result_of(entry)
        _need_dicom(entry, "DICOM SEG")
        return _dicom_answer(
            entry,
            "DICOM SEG",
            "seg_failed",
            lambda: entry.rendered("seg_bytes", lambda: dicom_bytes(_seg(entry))),
            "seg",
        )

    @app.get("/v1/predictions/{prediction_id}/fhir", tags=["predictions"], summary="FHIR R4 DiagnosticReport")
    def fhir(prediction_id: str):
        from medlens.serving.fhir import diagnostic_report

        entry = service.entry(prediction_id)
        report = entry.rendered("fhir", lambda: diagnostic_report(entry.prediction))
        return JSONResponse(report, media_type="application/fhir+json")

    @app.get(
        "/v1/predictions/{prediction_id}/sr",
        tags=["predictions"],
        summary="DICOM SR (DICOM input only)",
        response_class=Response,
        responses={200: {"content": {"application/dicom": {}}}, 409: {"description": "input was not DICOM"}},
    )
    def sr(prediction_id: str):
        entry = service.entry(prediction_id)
        _need_dicom(entry, "DICOM SR")
        return _dicom_answer(entry, "DICOM SR", "sr_failed", lambda: _sr_bytes(entry), "sr")

    # -- PACS ------------------------------------------------------------------------------------------
    @app.get("/v1/pacs/studies", tags=["pacs"], summary="Studies in the configured PACS (QIDO-RS)")
    def pacs_studies(limit: int = 50):
        if service.pacs is None:
            raise ApiError(400, "no_pacs", "no PACS configured (start the service with --pacs-url)")
        return _from_pacs(lambda: service.pacs.recent_studies(max(1, min(limit, 500))))

    @app.get("/v1/config", tags=["models"], summary="What the web page needs to know")
    def config():
        return {"pacs": service.pacs is not None, "max_upload_mb": settings.max_upload_mb, "version": __version__}

    # -- the web page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(GuardMiddleware, key_hashes=settings.key_hashes(), max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:  # outside the guard, so that preflight requests (which carry no key) are answered
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders, csp={"/docs": docs_csp})  # outermost: on every answer, early refusals too
    return app
