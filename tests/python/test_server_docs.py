"""/docs (Swagger UI through Litestar's render plugin) and /openapi.json, on a real server:
the document lists every route the app serves."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx


def test_docs_page_lists_every_route(server: Any) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    documented = set(spec["paths"])
    served = {route.path for route in server.app.routes}
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented routes that do not exist"

    page = httpx.get(f"{server.url}/docs", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text
    # The page embeds the same document (Swagger UI renders it without another request).
    embedded = re.search(r"spec:\s*(\{.*\}),\s*\n", page.text, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1))["paths"].keys() == spec["paths"].keys()
