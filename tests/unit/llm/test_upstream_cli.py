"""``medserve models register-upstream``: a route registered from options or a route file,
checked first, holding the credential's reference only; production only through the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.cli import app


def test_register_upstream_from_options_and_a_route_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server's allowlist: one more variable, and /run/secrets as the secrets folder
    monkeypatch.setenv("MEDSERVE_UPSTREAM_CREDENTIALS", '["CLUSTER_LLM_KEY"]')
    monkeypatch.setenv("MEDSERVE_UPSTREAM_SECRETS_DIR", "/run/secrets")
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "models", "register-upstream", "clinic-chat",
            "--base-url", "https://llm.example.org/v1/", "--upstream-model", "big-model",
            "--api-key-env", "CLUSTER_LLM_KEY", "--retries", "3",
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "registered clinic-chat version 1" in done.output
    assert "environment variable CLUSTER_LLM_KEY" in done.output

    route = tmp_path / "route.yaml"
    route.write_text(
        "base_url: https://llm.example.org/v1\nupstream_model: other\n"
        "api_key_file: /run/secrets/llm\ntimeout_s: 30\ngrammar: gbnf\n"
    )
    again = runner.invoke(
        app, ["models", "register-upstream", "clinic-chat", "--route", str(route)]
    )
    assert again.exit_code == 0, again.output
    registry = Registry.open(Settings(home=home))
    try:
        v1 = registry.store.get_version("clinic-chat", 1)
        v2 = registry.store.get_version("clinic-chat", 2)
        stored = json.loads(registry.artifacts.read_bytes(v1.artifact_sha256))
    finally:
        registry.close()
    assert v1.flavor == v2.flavor == "openai-upstream"
    assert stored["base_url"] == "https://llm.example.org/v1"  # normalised
    assert stored["api_key_env"] == "CLUSTER_LLM_KEY"
    assert stored["retries"] == 3
    assert v2.serving_config["upstream"]["credential"] == "secret file /run/secrets/llm"
    assert v2.tags["upstream"] == "llm.example.org"


def test_a_bad_route_is_refused_and_production_needs_the_gate(home: Path) -> None:
    runner = CliRunner()
    insecure = runner.invoke(
        app,
        [
            "models", "register-upstream", "clinic-chat",
            "--base-url", "http://llm.example.org/v1", "--upstream-model", "m",
        ],
    )  # fmt: skip
    assert insecure.exit_code != 0
    assert "plain http" in insecure.output
    gated = runner.invoke(
        app,
        [
            "models", "register-upstream", "clinic-chat", "--alias", "production",
            "--base-url", "https://llm.example.org/v1", "--upstream-model", "m",
        ],
    )  # fmt: skip
    assert gated.exit_code != 0
    assert "refused" in gated.output


def test_a_credential_outside_the_allowlist_is_refused(home: Path) -> None:
    """By default a route may name MEDSERVE_UPSTREAM_KEY_* variables and files under
    MEDSERVE_HOME/secrets only: not the store's URI, not /etc/... (nothing is registered)."""
    runner = CliRunner()
    base = ["models", "register-upstream", "clinic-chat",
            "--base-url", "https://llm.example.org/v1", "--upstream-model", "m"]  # fmt: skip
    for option, value, rule in (
        ("--api-key-env", "MEDSERVE_STORE_URI", "MEDSERVE_UPSTREAM_CREDENTIALS"),
        ("--api-key-file", "/etc/hostname", "MEDSERVE_UPSTREAM_SECRETS_DIR"),
        ("--api-key-file", str(home / "secrets" / ".." / "registry.db"), "secrets folder"),
    ):
        refused = runner.invoke(app, [*base, option, value])
        assert refused.exit_code != 0, (option, value)
        said = " ".join(refused.output.split())
        assert "not an allowed upstream credential" in said or "not under" in said, said
        assert rule in said, said
    for option, value in (
        ("--api-key-file", str(home / "secrets" / "clinic")),
        ("--api-key-env", "MEDSERVE_UPSTREAM_KEY_CLINIC"),
    ):
        ok = runner.invoke(app, [*base, option, value])
        assert ok.exit_code == 0, ok.output
    registry = Registry.open(Settings(home=home))
    try:
        versions = registry.store.list_versions("clinic-chat").items
        assert sorted(v.version for v in versions) == [1, 2]
    finally:
        registry.close()
