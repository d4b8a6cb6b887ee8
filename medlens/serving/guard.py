"""ASGI middleware in front of the REST app: API keys, the body limit, internal errors, security headers.

:class:`GuardMiddleware` answers from the request headers alone, before anything reads the body:
401 for a missing or wrong key, 413 when Content-Length passes the limit. A streamed body (chunked,
multipart) is counted as the app reads it and refused with 413 once the count passes the limit.
These early answers carry ``Connection: close``: the rest of the upload is never read.

:class:`SecurityHeaders` puts a Content-Security-Policy, ``nosniff``, ``X-Frame-Options: DENY`` and
``Referrer-Policy: no-referrer`` on every response, and ``Cache-Control: no-store`` on every one but
the page's static files.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from medlens.serving.settings import match_key

log = logging.getLogger("medlens.serve")

OPEN_PATHS = {"/healthz", "/", "/favicon.ico"}
OPEN_PREFIXES = ("/static/",)
CACHEABLE_PREFIXES = ("/static/", "/docs/assets/")
# The page is self-contained: its script, style and images come from this server (images as blob: URLs).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def json_error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """The service's error answer: ``{"error": code, "detail": detail}``."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit; answered 413 by the guard."""


class GuardMiddleware:
    """API keys (when configured) and the body limit, from the headers and before the body is read."""

    def __init__(self, app, *, key_hashes: dict[str, str], max_bytes: int):
        self.app = app
        self.key_hashes = key_hashes
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        state = scope.setdefault("state", {})
        state["key_id"] = None
        path = scope.get("path", "")
        length = headers.get("content-length")
        closing = {"Connection": "close"} if length not in (None, "0") or "transfer-encoding" in headers else {}
        if self.key_hashes and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            presented = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if not presented and auth[:7].lower() == "bearer ":
                presented = auth[7:].strip()
            key_id = match_key(presented, self.key_hashes) if presented else None
            if key_id is None:
                detail = (
                    "invalid API key"
                    if presented
                    else "an API key is required (header X-API-Key or Authorization: Bearer)"
                )
                refusal = json_error(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer", **closing})
                return await refusal(scope, receive, send)
            state["key_id"] = key_id
        if length is not None and not length.isdigit():
            return await json_error(400, "bad_request", "invalid Content-Length", closing)(scope, receive, send)
        if length is not None and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        await self._guarded(scope, _counting(receive, self.max_bytes), send)

    async def _guarded(self, scope, receive, send) -> None:
        """Run the app; a body past the limit is a 413, an unexpected error a one-line 500 (never a traceback)."""
        started = False

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the client gets JSON and the log one line
            log.error("internal error (%s)", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            if not started:
                await json_error(500, "internal", "internal error")(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        mb = self.max_bytes / 1024 / 1024
        refusal = json_error(
            413, "too_large", f"the upload is larger than the limit of {mb:.3g} MB", {"Connection": "close"}
        )
        return await refusal(scope, receive, send)


def _counting(receive, limit: int):
    """``receive`` that raises :class:`BodyTooLarge` once the body read so far passes ``limit`` bytes."""
    seen = 0

    async def counted():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return counted


class SecurityHeaders:
    """Security headers on every response; ``csp`` maps a path to its own policy (default :data:`PAGE_CSP`)."""

    def __init__(self, app, *, csp: dict[str, str] | None = None):
        self.app = app
        self.csp = csp or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = [*COMMON_HEADERS, (b"content-security-policy", self.csp.get(path, PAGE_CSP).encode())]
        if not path.startswith(CACHEABLE_PREFIXES):
            extra.append((b"cache-control", b"no-store"))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names] + extra
            await send(message)

        await self.app(scope, receive, with_headers)
