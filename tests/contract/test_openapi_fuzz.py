"""Property-based fuzzing of the served OpenAPI with schemathesis (issue #5, item 7).

A real ``medserve serve`` process (security on) over a copy of the demo home. schemathesis loads
the OpenAPI the server serves and calls every operation with generated requests: the schema's
examples, boundary "coverage" cases (undeclared methods included) and random fuzzing, with a
fixed seed. Authenticated as an admin, every response must be no 5xx, a declared status with a
declared content type, headers and body, valid requests accepted and invalid ones rejected, and
each operation must refuse the same call without the credential. A shorter run without any
credential must get 401 everywhere but the health probes (``openapi_fuzz_hooks.py``).

The CLI runs in a subprocess (its pytest plugin does not support this pytest yet); its report,
with a curl line per failure, is the assertion message.

Every operation is fuzzed: none is destructive for this throwaway home (there is no "delete
all" or shutdown endpoint; revoking a key needs a key id that generated data never guesses).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support import ServerProcess, start_server

from medserve.faces.demo import demo_models

REPO = Path(__file__).resolve().parents[2]
SEED = 20240605
# schemathesis's default for "valid data should have been accepted"
ACCEPTED = '"2xx", "3xx", "401", "403", "404", "409", "429", "5xx"'


def _copy_home(source: Path, target: Path) -> None:
    """A private copy of the (session-shared, read-only) demo home: the fuzz run writes to it."""
    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns("registry.db*", "*.log", "prometheus")
    )
    src, dst = sqlite3.connect(source / "registry.db"), sqlite3.connect(target / "registry.db")
    try:
        src.backup(dst)  # consistent even while the shared demo server writes its audit trail
    finally:
        src.close()
        dst.close()


@pytest.fixture(scope="module")
def fuzz_server(
    demo_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    _copy_home(demo_home, home)
    server = start_server(home, workers=1, env={"MEDSERVE_MAX_BODY_BYTES": "100000"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def schema_path(fuzz_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served OpenAPI (itself behind authentication), saved for both runs."""
    response = httpx.get(f"{fuzz_server.url}/openapi.json", headers=fuzz_server.headers)
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    path.write_bytes(response.content)
    return path


def _config(max_examples: int, extra: str = "") -> str:
    """schemathesis.toml: fixed seed, deterministic generation, real model names half the time
    (so generated bodies reach validation, prediction and explanation, not only the 404)."""
    models = ", ".join(f'"{demo.name}"' for demo in demo_models())
    return f"""
seed = {SEED}
request-timeout = 30
{extra}

[generation]
max-examples = {max_examples}
deterministic = true
database = "none"

[dictionaries.models]
values = [{models}]

[dictionaries.versions]
values = ["production", "1", "latest"]

[parameters]
"path.name" = {{ dictionary = "models", probability = 0.5 }}
"path.version" = {{ dictionary = "versions", probability = 0.5 }}

# What a schema-valid request may still get, where the OpenAPI cannot state the whole rule:
# a prediction body must fit the model's own signature (served at /v2/models/{{name}}, not in
# the OpenAPI), so well-formed JSON can still be 400 (shape) or 422 (values); an outcome window
# must end after it starts; a page token must come from a previous page.
[[operations]]
include-path-regex = "/(infer|predict|explain)$"
checks.positive_data_acceptance.expected-statuses = [{ACCEPTED}, "400", "422"]

[[operations]]
include-path-regex = "^/v1/(outcomes|models)$"
checks.positive_data_acceptance.expected-statuses = [{ACCEPTED}, "400"]

# A traffic split's percentages must add up to 100 and name versions (not in the OpenAPI).
[[operations]]
include-path-regex = "/traffic/"
checks.positive_data_acceptance.expected-statuses = [{ACCEPTED}, "400"]
"""


def _schemathesis(
    server: ServerProcess, schema: Path, config: str, headers: dict[str, str], phases: str
) -> subprocess.CompletedProcess[str]:
    config_path = schema.with_name(f"schemathesis-{len(headers)}.toml")
    config_path.write_text(config)
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color"]
    command += ["--config-file", str(config_path), "run", str(schema), "--url", server.url]
    # One worker: deterministic order, and hypothesis's lambda-source parsing is not thread-safe
    # on Python 3.11 (a SystemError from ast.parse under two workers).
    command += ["--phases", phases, "--workers", "1"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr)[-30_000:]


def test_every_operation_answers_within_its_schema(
    fuzz_server: ServerProcess, schema_path: Path
) -> None:
    """No 5xx; status, content type, headers and body as the OpenAPI declares them."""
    phases = "examples,coverage,fuzzing,stateful"
    result = _schemathesis(fuzz_server, schema_path, _config(8), fuzz_server.headers, phases)
    assert result.returncode == 0, _report(result)
    operations = sum(len(ops) for ops in json.loads(schema_path.read_text())["paths"].values())
    assert f"Tested: {operations}\n" in result.stdout, _report(result)  # every one of them


def test_unauthenticated_calls_get_401_never_5xx(
    fuzz_server: ServerProcess, schema_path: Path
) -> None:
    """401 with WWW-Authenticate everywhere but the health probes (openapi_fuzz_hooks.py)."""
    hooks = 'hooks = "tests.contract.openapi_fuzz_hooks"'
    phases = "examples,coverage,fuzzing"
    result = _schemathesis(fuzz_server, schema_path, _config(2, hooks), {}, phases)
    assert result.returncode == 0, _report(result)
