"""Every registry change leaves its audit record in the change's own transaction (the outbox),
and the audit writer moves it into the hash chain exactly once."""

from __future__ import annotations

import getpass
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from medserve.core.audit import AuditLog
from medserve.core.errors import VersionNotFoundError
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.store.governance import GovernanceStore
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.schema import registry_outbox
from medserve.core.store.sql import SqlRegistryStore
from medserve.faces.cli import app
from medserve.features.security.keys import SecurityStore


def _outbox(store: SqlRegistryStore) -> list[dict[str, object]]:
    with store.engine.connect() as conn:
        query = sa.select(registry_outbox).order_by(registry_outbox.c.seq)
        return [dict(r) for r in conn.execute(query).mappings()]


def _version(store: SqlRegistryStore, name: str) -> None:
    store.create_version(
        name, artifact_sha256="ab" * 32, artifact_filename="m.onnx", flavor="onnx", runtime="onnx"
    )


def test_changes_and_their_records_commit_together(store: SqlRegistryStore) -> None:
    store.create_model("sepsis", created_by="ana")
    _version(store, "sepsis")
    store.set_alias("sepsis", "production", 1, actor="ana", reason="approved by CMIO")
    with pytest.raises(VersionNotFoundError):  # a refused change leaves no record either
        store.set_alias("sepsis", "production", 7, actor="mallory")
    kinds = [(r["kind"], r["actor"], r["alias"], r["version"]) for r in _outbox(store)]
    assert kinds == [
        ("registry.model_created", "ana", None, None),
        ("registry.version_created", "unknown", None, 1),
        ("registry.alias_set", "ana", "production", 1),
    ]


def test_the_audit_writer_moves_each_change_into_the_chain_once(store: SqlRegistryStore) -> None:
    store.create_model("sepsis", created_by="ana")
    _version(store, "sepsis")
    store.set_alias("sepsis", "production", 1, actor="ana", reason="approved")
    store.delete_alias("sepsis", "production", actor="bob", reason="withdrawn")
    audit = AuditLog(store.engine)
    assert audit.drain_outbox() == 4
    assert audit.drain_outbox() == 0
    assert _outbox(store) == []
    rows = list(audit.entries())
    assert [r["action"] for r in rows] == [
        "registry.model_created",
        "registry.version_created",
        "registry.alias_set",
        "registry.alias_deleted",
    ]
    assert rows[2]["model"] == "sepsis"
    assert rows[2]["version"] == "1"
    assert '"reason":"approved"' in rows[2]["detail"]
    assert rows[3]["actor"] == "bob"
    assert audit.verify().ok


def test_the_audit_cli_sees_changes_made_without_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSERVE_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    store = SqlRegistryStore(f"sqlite:///{tmp_path}/registry.db")
    try:
        store.create_model("sepsis", created_by="ana")
    finally:
        store.close()
    result = runner.invoke(app, ["audit", "export"])
    assert result.exit_code == 0, result.output
    assert '"action":"registry.model_created"' in result.output
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0
    assert "2 entries verified" in verified.output  # the key's marker, then the change


def test_governance_changes_are_audited_with_their_actor(store: SqlRegistryStore) -> None:
    store.create_model("sepsis", created_by="ana")
    _version(store, "sepsis")
    gov = GovernanceStore(store)
    gov.save_card("sepsis", 1, {"intended_use": "triage"}, actor="cmio")
    gov.save_criteria("sepsis", 1, [{"metric": "auroc", "op": ">=", "value": 0.8}], actor="cmio")
    gov.save_evaluation(
        "sepsis",
        1,
        dataset_sha256="cd" * 32,
        dataset_name="held-out",
        kind="local",
        result={"n": 10},
        report_sha256=None,
        created_by="bob",
    )
    gov.save_training_run("sepsis", 1, {"threshold": {"value": 0.4}}, "task: binary", actor="bob")
    audit = AuditLog(store.engine)
    audit.drain_outbox()
    changes = [(r["action"], r["actor"]) for r in audit.entries() if r["model"] == "sepsis"]
    assert changes[2:] == [
        ("governance.card_edited", "cmio"),
        ("governance.criteria_set", "cmio"),
        ("governance.evaluation_stored", "bob"),
        ("governance.training_run_stored", "bob"),
    ]
    assert audit.verify().ok


def test_store_errors_never_carry_the_values(store: SqlRegistryStore) -> None:
    """A failed statement's message (what a log line would print) names no parameter value."""
    secret = "req-MRN-0042-identifier"
    with pytest.raises(sa.exc.DBAPIError) as caught, store.engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table WHERE x = :v"), {"v": secret})
    assert secret not in str(caught.value)


def test_monitoring_configuration_changes_are_audited(store: SqlRegistryStore) -> None:
    store.create_model("sepsis", created_by="ana")
    monitoring = MonitoringStore(store)
    monitoring.set_config("sepsis", ModelMonitoringConfig(), actor="ops")
    monitoring.add_rule("sepsis", "psi_max", ">", 0.25, actor="ops")
    audit = AuditLog(store.engine)
    audit.drain_outbox()
    changes = [(r["action"], r["actor"]) for r in audit.entries() if r["model"] == "sepsis"]
    assert changes[1:] == [("monitoring.config_set", "ops"), ("monitoring.rule_added", "ops")]


def test_key_and_tenant_changes_are_audited_wherever_they_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python API and the CLI: each change's entry is written with the change (the outbox),
    naming its actor (the caller's, or the local OS user for the CLI)."""
    monkeypatch.setenv("MEDSERVE_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    store = SqlRegistryStore(f"sqlite:///{tmp_path}/registry.db")
    try:
        security = SecurityStore(store.engine)
        issued = security.create_key("script-key", ["app"], created_by="script:etl")
        security.revoke_key(issued.key.key_id, actor="script:etl")
        security.set_model_tenant("sepsis", "onc", actor="script:etl")
        kinds = [row["kind"] for row in _outbox(store)]
        assert kinds == [
            "security.key_created",
            "security.key_revoked",
            "security.tenant_assigned",
        ]
    finally:
        store.close()
    created = runner.invoke(app, ["keys", "create", "cli-key", "--role", "auditor"])
    assert created.exit_code == 0, created.output
    assigned = runner.invoke(app, ["tenants", "assign", "sepsis", "-"])
    assert assigned.exit_code == 0, assigned.output
    exported = runner.invoke(app, ["audit", "export"])
    assert exported.exit_code == 0, exported.output
    entries = [orjson.loads(line) for line in exported.stdout.splitlines()]
    changes = [(e["action"], e["actor"]) for e in entries if e["action"].startswith("security.")]
    user = f"cli:{getpass.getuser()}"
    assert changes == [
        ("security.key_created", "script:etl"),
        ("security.key_revoked", "script:etl"),
        ("security.tenant_assigned", "script:etl"),
        ("security.key_created", user),
        ("security.tenant_assigned", user),
    ]
    assert all(e["action"] not in {"key_create", "tenant_assign"} for e in entries)  # once
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
