"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

The server is the real CLI (`python -m vsr_async train ... --port 0`) training a tiny model in a
subprocess, so schemathesis' synchronous client can hit it. A few hundred cases in all: no 5xx,
and every response (status, content type, headers, body) must match the document.
Left out: `/api/events` (an endless stream) and `POST /stop` (tested in test_web_lifecycle).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from helpers import REPO, TINY_SETTINGS, write_toml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from web.openapi import build_openapi

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25  # per operation and mode: about 250 cases in all
PANEL_LINE = re.compile(r"web panel: (http://127\.0\.0\.1:\d+)/")


@pytest.fixture(scope="module")
def server(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CLI training in a subprocess; yields the panel's base URL, stops it with POST /stop."""
    work = tmp_path_factory.mktemp("schemathesis")
    config = write_toml(
        work / "run.toml",
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(tiny_dataset),
            "DATA_ROOT": str(work / "Learn"),
            "WEB_ENABLED": True,
        },
    )
    command = [sys.executable, "-m", "vsr_async", "train", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--no-keyboard"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        base_url = None
        for line in process.stderr:  # the panel logs its URL once it is bound
            if found := PANEL_LINE.search(line):
                base_url = found.group(1)
                break
        assert base_url, f"no panel URL logged (exit code {process.poll()})"
        # Keep reading the log, or a full pipe would block the run's logging thread.
        drain = threading.Thread(target=process.stderr.read, daemon=True)
        drain.start()
        yield base_url
        stop = urllib.request.Request(f"{base_url}/stop", method="POST")
        with urllib.request.urlopen(stop, timeout=30) as response:
            assert response.status == 202
        assert process.wait(timeout=120) == 0, "the run survived the fuzzing and exits cleanly"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server}/api/openapi.json")


def constrained(operation: dict) -> bool:
    """Whether invalid input exists for an operation (a body, or a parameter with a rule)."""
    rules = ({"type": "string"}, {"type": "integer"})
    return "requestBody" in operation or any(
        p["schema"] not in rules or p["schema"].get("type") == "integer"
        for p in operation.get("parameters", [])
    )


# The operations, from the document the server serves (built by the same function); negative
# cases only where the document rules something out.
DOCUMENT = build_openapi(token_required=False)
CASES = [
    (mode, method.upper(), path)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
    if path not in ("/api/events", "/stop")
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or constrained(operation)
]


@pytest.mark.parametrize(("mode", "method", "path"), CASES)
def test_api_conforms_to_its_openapi_document(
    api_schema: schemathesis.BaseSchema, server: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server, checks=CHECKS, timeout=30)

    check()
