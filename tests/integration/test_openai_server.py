"""The OpenAI-compatible API on a real two-worker server, with the recording fake model installed
as a plugin (``PYTHONPATH``): the official ``openai`` client unmodified (sync, async, streaming,
json_schema, embeddings), budgets shared by both workers, the "finished" entry of a stream whose
caller went away, and no prompt or completion text anywhere on disk afterwards."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from tests import llm_fake
from tests.support import ServerProcess, auth, create_key, start_server, wait_for

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.features.security.keys import KeyLlmSettings, SecurityStore

openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[2]
CHAT = "scribe"
LEAKY = "leaky-scribe"
EMBED = "embedder"

# Synthetic identifiers and words no model, library or dataset holds: any hit is a leak.
NAME = "Zebediah Quillfeather"
MRN = "55501234"
PHONE = "617-555-0143"
PROMPT_WORDS = "xylophonic marmalade nebulizer"
PHI_PROMPT = f"Patient {NAME}, MRN {MRN}, phone {PHONE}: {PROMPT_WORDS} follow-up."
# The leaky model's answer: identifiers and words cut across chunks (a stream must not leak them)
ANSWER = ["Reach ", "Mr. Zebediah Quill", "feather at 617-5", "55-0143 re ", "quixotic",
          " tamarind", " plan."]  # fmt: skip
NEEDLES = {
    "name": NAME,
    "surname": "Quillfeather",
    "mrn": MRN,
    "phone": PHONE,
    "phone digits": "6175550143",
    "prompt words": "xylophonic",
    "prompt words 2": "nebulizer",
    "answer words": "quixotic",
    "answer words 2": "tamarind",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("openai")
    site = llm_fake.install_plugin(root / "site")
    home = root / "home"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # this process registers the test flavors too
    import sys

    sys.path.insert(0, str(site))
    from medserve.core.extensions import extensions

    extensions.cache_clear()
    try:
        registry = Registry.open(Settings(home=home))
        try:
            llm_fake.register_fake(registry, CHAT)
            llm_fake.register_fake(registry, LEAKY, reply=ANSWER)
            llm_fake.register_fake(registry, EMBED, embedding=True)
        finally:
            registry.close()
        srv = start_server(home, workers=2, env=env)
    finally:
        sys.path.remove(str(site))
        extensions.cache_clear()
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    yield srv
    srv.stop()


def token(server: ServerProcess) -> str:
    return server.headers["Authorization"].removeprefix("Bearer ")


def key_with(server: ServerProcess, roles: list[str], **settings: Any) -> dict[str, str]:
    secret = create_key(server.home, roles, name="llm-test")
    if settings:
        registry = Registry.open(Settings(home=server.home))
        try:
            store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
            store.set_llm_settings(secret.split("_")[1], KeyLlmSettings(**settings))
        finally:
            registry.close()
    return auth(secret)


def test_the_official_client_works_unmodified(server: ServerProcess) -> None:
    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=token(server)) as client:
        _sync_calls(client)

    async def run_async() -> tuple[str | None, str]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/openai/v1", api_key=token(server)
        ) as aclient:
            one = await aclient.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "hi"}]
            )
            streamed = await aclient.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in streamed if c.choices]
            return one.choices[0].message.content, "".join(parts)

    assert asyncio.run(run_async()) == ("Hello there.", "Hello there.")


def _sync_calls(client: Any) -> None:
    answer = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello"}], max_tokens=20
    )
    assert answer.choices[0].message.content == "Hello there."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3

    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 4

    completion = client.completions.create(model=CHAT, prompt="Once", max_tokens=2)
    assert completion.choices[0].text == "Hello there"
    assert completion.choices[0].finish_reason == "length"

    vectors = client.embeddings.create(model=EMBED, input=["chest pain", "fever"])  # base64
    assert [len(d.embedding) for d in vectors.data] == [4, 4]
    floats = client.embeddings.create(model=EMBED, input="fever", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors.data[1].embedding)

    assert {m.id for m in client.models.list()} == {CHAT, LEAKY, EMBED}
    assert client.models.retrieve(f"{CHAT}@1").id == CHAT

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])


def test_json_schema_through_the_official_client(server: ServerProcess) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("json_schema needs llama-cpp-python (bash scripts/llm-wheel.sh)")
    schema = {
        "type": "object",
        "properties": {"risk": {"type": "string", "enum": ["low", "high"]}},
        "required": ["risk"],
        "additionalProperties": False,
    }
    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=token(server)) as client:
        answer = client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "risk?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "risk", "schema": schema, "strict": True},
            },
        )
    assert answer.choices[0].finish_reason == "stop"


def test_budgets_hold_across_both_workers(server: ServerProcess) -> None:
    """Each call on a new connection (either worker may take it); the key's requests per
    minute are counted once for the whole server."""
    limit = 8
    headers = key_with(server, ["app"], requests_per_minute=limit)
    body = {"model": CHAT, "messages": [{"role": "user", "content": "whoami"}]}
    pids: set[str] = set()
    statuses = []
    for _ in range(limit + 1):
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
            answer = client.post("/openai/v1/chat/completions", json=body)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            pids.add(answer.json()["choices"][0]["message"]["content"])
    assert statuses == [200] * limit + [429]
    refused = answer.json()["error"]
    assert refused["code"] == "requests_per_minute"
    assert "requests_per_minute limit of 8" in refused["message"]
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert len(pids) == 2, f"one worker served every call ({pids}): nothing shared was tested"


def test_a_stream_whose_caller_leaves_is_finished_in_the_trail(server: ServerProcess) -> None:
    headers = key_with(server, ["app"])
    body = {"model": CHAT, "messages": [{"role": "user", "content": "slow"}], "stream": True}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=10) as client,
        client.stream("POST", "/openai/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]
    assert any("tick" in line for line in seen)

    def finished() -> dict[str, Any] | None:
        page = httpx.get(
            f"{server.url}/v1/audit",
            params={"model": CHAT, "limit": 1000},
            headers=server.headers,
            timeout=10,
        ).json()
        for entry in page["entries"]:
            if entry["action"] == "llm.chat.finished":
                detail = orjson.loads(entry["detail"])
                if detail["finish_reason"] == "disconnected":
                    return detail
        return None

    detail = wait_for(finished, timeout_s=30, what="the disconnected stream's finished entry")
    assert 0 < detail["completion_tokens"] < 2000


def test_no_prompt_or_completion_text_is_left_anywhere(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a server of its own (it is stopped to read everything): PHI-laden prompts, answers
    with identifiers cut across chunks, streamed and not, blocked, embedded."""
    root = tmp_path_factory.mktemp("openai-phi")
    site = llm_fake.install_plugin(root / "site")
    home = root / "home"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    import sys

    sys.path.insert(0, str(site))
    from medserve.core.extensions import extensions

    extensions.cache_clear()
    try:
        registry = Registry.open(Settings(home=home))
        try:
            llm_fake.register_fake(registry, LEAKY, reply=ANSWER)
            llm_fake.register_fake(registry, "strict", serving_config={"phi_policy": "block"})
            llm_fake.register_fake(registry, EMBED, embedding=True)
        finally:
            registry.close()
    finally:
        sys.path.remove(str(site))
        extensions.cache_clear()
    srv = start_server(home, workers=2, env=env)
    try:
        _leaky_calls(srv)
    finally:
        assert srv.stop() == 0

    hits = _hits(home, srv.log())
    assert hits == [], hits
    _assert_audited(home)


def _leaky_calls(srv: ServerProcess) -> None:
    with openai.OpenAI(base_url=f"{srv.url}/openai/v1", api_key=token(srv)) as client:
        messages = [
            {"role": "system", "content": f"You help with {PROMPT_WORDS}."},
            {"role": "user", "content": PHI_PROMPT},
        ]
        answer = client.chat.completions.create(model=LEAKY, messages=messages)  # type: ignore[arg-type]
        content = answer.choices[0].message.content or ""
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=LEAKY,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
            )
            if c.choices
        )
        for text in (content, streamed):
            assert "quixotic" in text  # the answer's words reach the caller...
            for leaked in ("Quillfeather", "0143", "617-5"):
                assert leaked not in text  # ...its identifiers do not
        client.completions.create(model=LEAKY, prompt=PHI_PROMPT)
        client.embeddings.create(model=EMBED, input=[PHI_PROMPT, PROMPT_WORDS])
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="strict", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=LEAKY,
                messages=messages,  # type: ignore[arg-type]
                tools=[{"type": "function", "function": {"name": PROMPT_WORDS.split()[0]}}],
            )


def _assert_audited(home: Path) -> None:
    """The calls were audited: their entries hold counts, categories and hashes."""
    registry = Registry.open(Settings(home=home))
    try:
        engine = registry.store.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            actions = [r[0] for r in conn.execute(sa.text("SELECT action FROM sec_audit"))]
    finally:
        registry.close()
    for action in ("llm.chat", "llm.chat.started", "llm.chat.finished", "llm.completion",
                   "llm.embeddings", "llm.chat.refused"):  # fmt: skip
        assert action in actions


def _hits(home: Path, server_log: str) -> list[str]:
    """Every place under ``home`` (each table's text, each file's bytes) or in the server log
    where a needle is found, case-insensitively."""
    found = []
    lowered = {k: v.lower() for k, v in NEEDLES.items()}
    for kind, needle in lowered.items():
        if needle in server_log.lower():
            found.append(f"server log: {kind}")
    for path in sorted(home.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes().lower()
        for kind, needle in lowered.items():
            if needle.encode() in data:
                found.append(f"{path.relative_to(home)}: {kind}")
        if data.startswith(b"sqlite format 3"):  # every table's values, read as SQLite has them
            found += [f"{path.name} {hit}" for hit in _table_hits(path, lowered)]
    return found


def _table_hits(path: Path, needles: dict[str, str]) -> list[str]:
    """Each table's every value as text (and decoded from base64 where it looks so)."""
    found = []
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    texts = [str(value).lower()]
                    if isinstance(value, bytes):
                        texts.append(value.decode("utf-8", "replace").lower())
                    if isinstance(value, str) and len(value) > 16:
                        with contextlib.suppress(ValueError):
                            texts.append(base64.b64decode(value, validate=True).decode().lower())
                    for kind, needle in needles.items():
                        if any(needle in t for t in texts):
                            found.append(f"{table}: {kind}")
    finally:
        conn.close()
    return found
