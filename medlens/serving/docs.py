"""The API docs at ``/docs``: swagger-ui served from the installed package `fastapi-offline` (no CDN).

Its assets are served under ``/docs/assets/``; the page's one inline script (swagger-ui's
initialiser, written by FastAPI) is allowed by its sha256 in the page's Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"


def add_docs(app: FastAPI, title: str) -> str:
    """Add ``/docs`` and its assets to ``app`` (created with ``docs_url=None``); returns the page's CSP."""
    html = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{title} API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )
    app.mount(ASSETS_URL, StaticFiles(directory=str(importlib.resources.files("fastapi_offline") / "static")))

    @app.get(DOCS_URL, include_in_schema=False)
    def docs():
        return HTMLResponse(html.body)

    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", html.body.decode(), re.S)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
