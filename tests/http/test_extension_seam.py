"""A separately installed package adds a capability as one module, through the entry point
group alone: a runtime flavor, a registry event handler, a route and a CLI group. Nothing in
medserve's app factory, runtime loader or CLI root is edited for it."""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from typer.testing import CliRunner

from medserve.core.extensions import extensions
from medserve.core.registry.service import Registry
from medserve.core.runtimes.loader import load_runtime
from medserve.core.settings import Settings

PLUGIN = '''
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from fastapi import APIRouter

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.events import VersionRegistered
from medserve.core.runtimes.base import RuntimeMetadata
from medserve.serving.extension import ServingExtension

SEEN: list[str] = []
ANSWERED: list[float] = []
router = APIRouter()
cli = typer.Typer(name="echo", help="The echo capability.")


@router.get("/v1/echo")
async def echo() -> dict[str, object]:
    return {"seen": SEEN}


@cli.command()
def hello() -> None:
    print("hello from echo")


class Doubler:
    """A runtime: the value is twice the first feature."""

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return {"value": 2 * X[:, 0]}

    def metadata(self) -> RuntimeMetadata:
        raise NotImplementedError


class EchoExtension(ServingExtension):
    name = "echo"
    router = router

    def runtime_flavors(self):
        return {"doubler": lambda path, options: Doubler()}

    def registry_handlers(self):
        def seen(event):
            if isinstance(event, VersionRegistered):
                SEEN.append(f"{event.version.model_name} v{event.version.version}")

        return (seen,)

    def cli_groups(self):
        return (cli,)

    def before_inference(self, resources):
        def refuse_negative(model, X, context):
            if X[0, 0] < 0:
                raise InvalidRequestError("the echo extension refuses a negative 'a'")

        return refuse_negative

    def after_inference(self, resources):
        def answered(model, X, outputs, context):
            ANSWERED.append(float(outputs["value"][0]))

        return answered


extension = EchoExtension()
'''


@pytest.fixture
def echo_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``pip install`` of a package with one module and one entry point, as files on sys.path."""
    site = tmp_path / "site"
    (site / "echo_ext-0.1.dist-info").mkdir(parents=True)
    (site / "echo_ext.py").write_text(textwrap.dedent(PLUGIN))
    (site / "echo_ext-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: echo-ext\nVersion: 0.1\n"
    )
    (site / "echo_ext-0.1.dist-info" / "entry_points.txt").write_text(
        "[medserve.extensions]\necho = echo_ext:extension\n"
    )
    monkeypatch.syspath_prepend(str(site))
    extensions.cache_clear()
    yield
    extensions.cache_clear()


@pytest.mark.usefixtures("echo_installed")
def test_a_third_party_flavor_is_loaded_by_the_runtime_loader(tmp_path: Path) -> None:
    assert "echo" in [e.name for e in extensions()]
    runtime = load_runtime("doubler", tmp_path)
    assert runtime.predict(np.array([[1.5, 0.0]]))["value"].tolist() == [3.0]


@pytest.mark.usefixtures("echo_installed")
async def test_registry_events_and_routes_reach_a_third_party_extension(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    from medserve.faces.app import create_app

    settings = Settings(home=tmp_path / "home", security=False)
    X = np.arange(20, dtype=float).reshape(10, 2)
    import pandas as pd

    sample = pd.DataFrame(X, columns=["a", "b"])
    registry = Registry.open(settings)
    try:
        registry.register("lin", LinearRegression().fit(X, X[:, 0]), sample=sample)
    finally:
        registry.close()
    registry = Registry.open(settings)
    try:
        registry.set_alias("lin", "production", 1, actor="test")
    finally:
        registry.close()
    app = create_app(settings)
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.get("/v1/echo")
            predicted = await client.post(
                "/v1/models/lin/predict", json={"instances": [{"a": 2.0, "b": 3.0}]}
            )
            refused = await client.post(
                "/v1/models/lin/predict", json={"instances": [{"a": -2.0, "b": 3.0}]}
            )
    assert answer.status_code == 200
    assert answer.json() == {"seen": ["lin v1"]}
    # the pipeline hooks: before inference may refuse, after inference sees the outputs
    assert predicted.status_code == 200, predicted.text
    assert refused.status_code == 400  # InvalidRequestError
    assert "echo extension" in refused.json()["error"]
    import echo_ext  # type: ignore[import-not-found]

    assert [pytest.approx(predicted.json()["predictions"][0]["value"])] == echo_ext.ANSWERED


@pytest.mark.usefixtures("echo_installed")
def test_a_third_party_cli_group_joins_the_medserve_command() -> None:
    import medserve.faces.cli as cli_root

    reloaded = importlib.reload(cli_root)
    try:
        result = CliRunner().invoke(reloaded.app, ["echo", "hello"])
        assert result.exit_code == 0, result.output
        assert "hello from echo" in result.output
    finally:
        extensions.cache_clear()
        importlib.reload(cli_root)
    assert json.dumps({"ok": True})  # the root reloads cleanly without the extension
