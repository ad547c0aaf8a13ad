"""Property-based API tests: schemathesis generates requests (valid and invalid) from the
server's own OpenAPI document; no response may be a 5xx or break the document's schemas."""

from __future__ import annotations

import json
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastlm.server.app import openapi_document
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]  # ~15 generated requests per operation

schema = schemathesis.openapi.from_dict(json.loads(openapi_document()))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# 15 generated cases per operation, reproducible (no example database), no time limits.
SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    database=None,
)


@schema.parametrize()
@SETTINGS
def test_api(case: Any, server: Any) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
