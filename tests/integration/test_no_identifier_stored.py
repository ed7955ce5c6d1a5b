"""Identifiers sent in every header and body field a caller can set, over answered, refused and
failed requests to a real two-worker server: none of them is left in any store, journal or log.

After SIGTERM the test reads every text and blob column of every table of the database, the raw
bytes of every file under the home (the database and its WAL, the journals, artifacts, the
Prometheus files) and the server's own stdout/stderr log, and looks for each synthetic value as
sent, case-insensitively, and for the digits-only forms of the phone number and the SSN.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from tests.support import ServerProcess, auth, create_key, start_server

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

BC = "breast-cancer"

# Synthetic PHI: values no dataset, model or library holds, so any hit is a leak.
NAME = "Zebediah Quillfeather"
MRN = "MRN-55501234"
SSN = "987-65-4329"
PHONE = "(617) 555-0143"
EMAIL = "zeb.quillfeather@example.org"
STREET = "1427 Marigold Lane"
ADDRESS = f"{STREET}, Springfield, MA 02139"
DOB = "1961-07-23"
IP = "203.0.113.77"
NOTE = "Esmerelda Vantongeren reports crushing chest pain since Tuesday; husband at bedside"
SENT = {
    "name": NAME,
    "mrn": MRN,
    "ssn": SSN,
    "phone": PHONE,
    "email": EMAIL,
    "address": ADDRESS,
    "dob": DOB,
    "ip": IP,
    "note": NOTE,
}
# What is looked for: each value as sent, its distinctive parts, the digits-only forms.
NEEDLES = {
    **SENT,
    "surname": "Quillfeather",
    "mrn digits": "55501234",
    "ssn digits": "987654329",
    "phone digits": "6175550143",
    "phone dashed": "617-555-0143",
    "street": STREET,
    "dob us": "07/23/1961",
    "note name": "Vantongeren",
}

# Every header a caller can set, each carrying an identifier.
PHI_HEADERS = {
    "X-Request-ID": MRN,
    "X-Patient-ID": SSN,
    "X-Site": NAME,
    "User-Agent": f"EHR/1.0 (patient {NAME}; {EMAIL})",
    "Referer": f"https://ehr.example/chart?patient={quote(NAME)}&dob={DOB}",
    "X-Forwarded-For": IP,
    "Cookie": f"patient={quote(EMAIL)}; phone={quote(PHONE)}",
    "X-Patient-Address": ADDRESS,
    "X-Clinical-Note": NOTE,
}
QUERY = {"patient": NAME, "ssn": SSN, "phone": PHONE, "dob": DOB}


@pytest.fixture(scope="module")
def home(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, and the demo's CDS Hooks service (the synthetic cardio model)."""
    from medserve.faces.demo.interop import register_cardio_model

    target = tmp_path_factory.mktemp("no-identifier") / "home"
    shutil.copytree(demo_home, target, ignore=shutil.ignore_patterns("*.log", "prometheus"))
    registry = Registry.open(Settings(home=target))
    try:
        register_cardio_model(registry)
    finally:
        registry.close()
    return target


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    srv = start_server(home, workers=2)
    yield srv
    srv.stop()


def one_record() -> dict[str, Any]:
    from medserve.faces.demo import demo_models

    demo = next(d for d in demo_models() if d.name == BC)
    return {str(k): float(v) for k, v in demo.frame.iloc[0].items()}


def v2_body(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "input",
        "shape": [1, len(row)],
        "datatype": "FP64",
        "data": list(row.values()),
    }
    return {"inputs": [tensor], **extra}


def hook_request() -> dict[str, Any]:
    """The demo's patient-view call, about our synthetic patient, every field filled."""
    from medserve.faces.demo.interop import example_hook_request

    body = example_hook_request(MRN)
    body["context"]["userId"] = f"Practitioner/{quote(NAME)}"
    body["context"]["encounterId"] = SSN
    body["prefetch"]["patient"].update(
        name=[{"text": NAME, "family": "Quillfeather", "given": ["Zebediah"]}],
        birthDate=DOB,
        telecom=[{"system": "phone", "value": PHONE}, {"system": "email", "value": EMAIL}],
        address=[{"text": ADDRESS, "line": [STREET], "postalCode": "02139"}],
        identifier=[{"system": "urn:mrn", "value": MRN}, {"system": "urn:ssn", "value": SSN}],
    )
    body["prefetch"]["patient"]["text"] = {"status": "generated", "div": f"<div>{NOTE}</div>"}
    return body


def exchange(server: ServerProcess, home: Path) -> dict[str, int]:
    """Every kind of call, each carrying the identifiers; the status of each, by name."""
    admin = {**server.headers, **PHI_HEADERS}
    app = {**auth(create_key(home, ["app"], name="phi-app")), **PHI_HEADERS}
    auditor = {**auth(create_key(home, ["auditor"], name="phi-auditor")), **PHI_HEADERS}
    wrong = {**PHI_HEADERS, "Authorization": f"Bearer msk_{SSN}_{quote(NAME)}"}
    record = one_record()
    extra_fields = {
        **record,
        "patient_name": NAME,
        "mrn": MRN,
        "ssn": SSN,
        "phone": PHONE,
        "email": EMAIL,
        "address": ADDRESS,
        "birth_date": DOB,
        "ip_address": IP,
        "note": NOTE,
    }
    strings_in_numbers = {**record, "mean radius": NAME, "mean texture": SSN, "mean area": NOTE}
    phi_model = quote(NAME)  # the URL path as a model name
    outcomes = {
        "outcomes": [
            {
                "patient_id": MRN,
                "model": BC,
                "start": "2020-01-01T00:00:00Z",
                "end": "2030-01-01T00:00:00Z",
                "outcome": 1,
            },
            {"prediction_id": f"{SSN}-0", "outcome": 0},
        ]
    }
    calls: dict[str, tuple[str, str, dict[str, str], Any]] = {
        # answered
        "predict": ("POST", f"/v1/models/{BC}/predict", admin, {"instances": [record]}),
        "predict explain": (
            "POST",
            f"/v1/models/{BC}/predict",
            app,
            {"instances": [record], "explain": True, "patient": NAME},
        ),
        "infer": (
            "POST",
            f"/v2/models/{BC}/infer",
            admin,
            v2_body(record, id=MRN, parameters={"patient_id": MRN, "note": NOTE}),
        ),
        "explain": ("POST", f"/v1/models/{BC}/explain", admin, {"instances": [record]}),
        "outcomes": ("POST", "/v1/outcomes", app, outcomes),
        "cds hook": ("POST", "/cds-services/cardio-risk", admin, hook_request()),
        "audit read": ("GET", "/v1/audit", admin, None),
        # refused: 422 (a value breaks a rule) or 400 (the body's shape is wrong)
        "extra fields": ("POST", f"/v1/models/{BC}/predict", admin, {"instances": [extra_fields]}),
        "strings": ("POST", f"/v1/models/{BC}/predict", app, {"instances": [strings_in_numbers]}),
        "infer strings": (
            "POST",
            f"/v2/models/{BC}/infer",
            admin,
            {"inputs": [{"name": NAME, "shape": [1], "datatype": "BYTES", "data": [NOTE]}]},
        ),
        "explain extra": (
            "POST",
            f"/v1/models/{BC}/explain",
            admin,
            {"instances": [extra_fields], "class": NAME},
        ),
        "outcomes bad": (
            "POST",
            "/v1/outcomes",
            admin,
            {"outcomes": [{"patient_id": MRN, "model": BC, "start": DOB, "end": NAME}]},
        ),
        "cds bad": ("POST", "/cds-services/cardio-risk", admin, {"hook": NAME, "context": SENT}),
        # refused: 401
        "no key": ("POST", f"/v1/models/{BC}/predict", PHI_HEADERS, {"instances": [record]}),
        "wrong key": ("POST", f"/v2/models/{phi_model}/infer", wrong, v2_body(record)),
        "wrong key route": ("GET", f"/v1/models/{phi_model}", wrong, None),
        "no key path": ("GET", f"/{phi_model}/{SSN}", PHI_HEADERS, None),
        # refused: 403
        "forbidden predict": ("POST", f"/v1/models/{BC}/predict", auditor, {"instances": [record]}),
        "forbidden named": ("POST", f"/v1/models/{phi_model}/predict", auditor, {"instances": []}),
        "forbidden audit": ("GET", "/v1/audit", app, None),
        # refused: 404
        "unknown model": ("POST", f"/v1/models/{phi_model}/predict", admin, {"instances": []}),
        "unknown version": (
            "POST",
            f"/v2/models/{BC}/versions/{quote(SSN)}/infer",
            admin,
            v2_body(record),
        ),
        "unknown card": ("GET", f"/v1/models/{phi_model}/versions/1/card", admin, None),
        "unknown route": ("GET", f"/patients/{phi_model}/{SSN}", admin, None),
        "unknown service": ("POST", f"/cds-services/{phi_model}", admin, hook_request()),
    }
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (method, path, headers, body) in calls.items():
            response = client.request(method, path, params=QUERY, headers=headers, json=body)
            statuses[name] = response.status_code
        # refused before decoding: malformed JSON and a wrong media type, the identifiers in
        # the raw body
        for name, content_type in (("malformed", "application/json"), ("media", "text/plain")):
            response = client.post(
                f"/v1/models/{BC}/predict",
                params=QUERY,
                headers={**admin, "Content-Type": content_type},
                content=f'{{"instances": [{{"name": "{NAME}", "ssn": "{SSN}"'.encode(),
            )
            statuses[name] = response.status_code
    return statuses


def _leaks_in(data: bytes, where: str) -> list[tuple[str, str]]:
    low = data.lower()
    return [(where, what) for what, value in NEEDLES.items() if value.lower().encode() in low]


def _database_leaks(database: Path) -> list[tuple[str, str]]:
    leaks: list[tuple[str, str]] = []
    conn = sqlite3.connect(database)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, str):
                        value = value.encode()
                    if isinstance(value, bytes):
                        leaks += _leaks_in(value, f"{database.name}:{table}.{column}")
    finally:
        conn.close()
    return leaks


def test_no_identifier_is_left_in_any_store_journal_or_log(
    server: ServerProcess, home: Path
) -> None:
    try:
        statuses = exchange(server, home)
    finally:
        code = server.stop()  # SIGTERM: every queue drained, the open minutes' counts written
    assert code == 0, server.log()
    assert statuses == {
        "predict": 200,
        "predict explain": 200,
        "infer": 200,
        "explain": 200,
        "outcomes": 200,
        "cds hook": 200,
        "audit read": 200,
        "extra fields": 422,
        "strings": 422,
        "infer strings": 400,
        "explain extra": 422,
        "outcomes bad": 400,
        "cds bad": 400,
        "no key": 401,
        "wrong key": 401,
        "wrong key route": 401,
        "no key path": 401,
        "forbidden predict": 403,
        "forbidden named": 403,
        "forbidden audit": 403,
        "unknown model": 404,
        "unknown version": 404,
        "unknown card": 404,
        "unknown route": 404,
        "unknown service": 404,
        "malformed": 400,
        "media": 415,
    }
    files = [p for p in home.rglob("*") if p.is_file()]
    databases = [p for p in files if p.read_bytes()[:16] == b"SQLite format 3\x00"]
    assert home / "registry.db" in databases
    leaks = [leak for database in databases for leak in _database_leaks(database)]
    for path in files:
        leaks += _leaks_in(path.read_bytes(), str(path.relative_to(home)))
    leaks += _leaks_in(server.log_path.read_bytes(), "server log")
    found = sorted(set(leaks))
    assert not found, "identifiers stored:\n" + "\n".join(f"{w}: {what}" for w, what in found)
