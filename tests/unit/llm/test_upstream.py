"""The upstream runtime against scripted transports (httpx.MockTransport): what is sent, how
the stream is read, which failures are retried, counted by the breaker, or neither."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medserve.core.errors import (
    InvalidRequestError,
    ModelLoadError,
    UpstreamCredentialNotAllowedError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from medserve.core.extensions import FlavorOptions
from medserve.features.llm.protocol import GenerationParams
from medserve.features.llm.upstream import CircuitBreaker, UpstreamRuntime
from medserve.features.llm.upstream_flavor import load_upstream
from medserve.features.llm.upstream_route import CredentialPolicy, UpstreamRoute, parse_route
from medserve.serving import http_errors


def _route(**fields: Any) -> UpstreamRoute:
    base = {
        "base_url": "https://llm.example.org/v1",
        "upstream_model": "big-model",
        "api_key_env": "MEDSERVE_UPSTREAM_KEY_TEST",
        "retries": 2,
        "backoff_s": 0,
        "backoff_max_s": 0,
        "breaker_failures": 3,
    }
    return parse_route({**base, **fields})


def _sse(*events: dict[str, Any] | str) -> bytes:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]
    return b"".join(lines)


def _delta(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


ANSWER = _sse(
    _delta("Hel"),
    _delta("lo"),
    _delta(None, "stop"),
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}},
    "[DONE]",
)


def _runtime(
    handler: Callable[[httpx.Request], httpx.Response], **fields: Any
) -> tuple[UpstreamRuntime, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return UpstreamRuntime(_route(**fields), transport=httpx.MockTransport(record)), seen


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSERVE_UPSTREAM_KEY_TEST", "sk-test-123")
    monkeypatch.setenv("MEDSERVE_UPSTREAM_SECRETS_DIR", str(tmp_path))  # the key files' folder


PARAMS = GenerationParams(max_tokens=5, temperature=0, seed=3, stop=("\n\n",))


def test_a_chat_is_sent_as_a_stream_with_the_key_and_read_with_its_usage() -> None:
    runtime, seen = _runtime(lambda r: httpx.Response(200, content=ANSWER))
    chunks = list(runtime.chat([{"role": "user", "content": "hi"}], PARAMS))
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (11, 2)
    request = seen[0]
    assert str(request.url) == "https://llm.example.org/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    body = json.loads(request.content)
    assert body == {
        "model": "big-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n\n"],
        "seed": 3,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_without_usage_the_completion_is_counted_by_deltas() -> None:
    answer = _sse(
        {"choices": [{"text": "a"}]}, {"choices": [{"text": "b", "finish_reason": "length"}]}
    )
    runtime, seen = _runtime(lambda r: httpx.Response(200, content=answer))
    chunks = list(runtime.complete("x", PARAMS))
    assert str(seen[0].url).endswith("/completions")
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 2
    assert chunks[-1].prompt_tokens == 0  # the admission's estimate stays


def test_a_failure_before_the_answer_is_retried_then_succeeds() -> None:
    statuses = iter([503, 429, 200])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        return httpx.Response(status, content=ANSWER if status == 200 else b"busy")

    runtime, seen = _runtime(flaky)
    assert "".join(c.text for c in runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert len(seen) == 3
    assert runtime.breaker.state == "closed"


def test_retries_are_bounded_and_the_error_names_the_status_not_the_body() -> None:
    runtime, seen = _runtime(lambda r: httpx.Response(500, content=b"echo: Zebediah"))
    with pytest.raises(UpstreamError) as failed:
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert len(seen) == 3  # one call and two retries
    assert "HTTP 500" in failed.value.message
    assert "Zebediah" not in failed.value.message


def test_a_refusal_is_not_retried_nor_counted_by_the_breaker() -> None:
    runtime, seen = _runtime(lambda r: httpx.Response(401), breaker_failures=1)
    for _ in range(3):
        with pytest.raises(UpstreamError, match="refused the route's credential"):
            list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert len(seen) == 3
    assert runtime.breaker.state == "closed"


def test_a_timeout_is_a_504_and_a_cut_stream_a_502() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    runtime, seen = _runtime(hang)
    with pytest.raises(UpstreamTimeoutError):
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert len(seen) == 1  # a read timeout is not retried: the upstream may be generating

    cut, _ = _runtime(lambda r: httpx.Response(200, content=_sse(_delta("Hel"))))
    stream = cut.chat([{"role": "user", "content": "x"}], PARAMS)
    assert next(stream).text == "Hel"
    with pytest.raises(UpstreamError, match="before finishing"):
        next(stream)


def test_an_error_event_mid_stream_is_a_502() -> None:
    answer = _sse(_delta("a"), {"error": {"message": "boom Zebediah"}})
    runtime, _ = _runtime(lambda r: httpx.Response(200, content=answer))
    with pytest.raises(UpstreamError) as failed:
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert "Zebediah" not in failed.value.message


def test_the_breaker_opens_after_failures_and_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=10, clock=lambda: now[0])
    breaker.before()
    breaker.failure()
    assert breaker.state == "closed"
    breaker.before()
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(UpstreamUnavailableError, match="10 s more"):
        breaker.before()
    now[0] = 10.0
    assert breaker.before()  # the trial
    with pytest.raises(UpstreamUnavailableError):
        breaker.before()  # one trial at a time
    breaker.failure(trial=True)
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.before()
    breaker.success(trial=True)
    assert breaker.state == "closed"


def test_only_the_trials_own_outcome_settles_a_half_open_breaker() -> None:
    """Calls run concurrently: one that started before the breaker opened and ends during the
    trial neither frees the trial's slot nor settles the breaker for it."""
    now = [0.0]
    breaker = CircuitBreaker(failures=1, reset_s=10, clock=lambda: now[0])
    straggler = breaker.before()  # a long stream, started while closed
    assert straggler is False
    assert breaker.before() is False
    breaker.failure()  # another call fails: open
    now[0] = 10.0
    assert breaker.before() is True  # the trial
    breaker.release(straggler)  # the straggler's caller goes away
    with pytest.raises(UpstreamUnavailableError):
        breaker.before()  # the trial is still the only call let through
    breaker.failure(straggler)  # nor does its failure reopen or free anything
    with pytest.raises(UpstreamUnavailableError):
        breaker.before()
    breaker.failure(trial=True)
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.before() is True


def test_an_open_breaker_sends_nothing() -> None:
    runtime, seen = _runtime(lambda r: httpx.Response(502), retries=0, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    with pytest.raises(UpstreamUnavailableError):
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert len(seen) == 2


def test_a_grammar_needs_a_route_that_takes_one() -> None:
    runtime, _ = _runtime(lambda r: httpx.Response(200, content=ANSWER))
    with pytest.raises(InvalidRequestError, match="does not take a grammar"):
        runtime.chat([{"role": "user", "content": "x"}], GenerationParams(grammar='root ::= "a"'))
    gbnf, seen = _runtime(lambda r: httpx.Response(200, content=ANSWER), grammar="gbnf")
    list(gbnf.chat([{"role": "user", "content": "x"}], GenerationParams(grammar='root ::= "a"')))
    assert json.loads(seen[0].content)["grammar"] == 'root ::= "a"'


def test_the_credential_is_read_per_call_and_its_absence_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEDSERVE_UPSTREAM_KEY_TEST")
    runtime, seen = _runtime(lambda r: httpx.Response(200, content=ANSWER))
    with pytest.raises(UpstreamError, match="MEDSERVE_UPSTREAM_KEY_TEST is not set"):
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert seen == []
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    from_file, seen = _runtime(
        lambda r: httpx.Response(200, content=ANSWER), api_key_env=None, api_key_file=str(secret)
    )
    list(from_file.chat([{"role": "user", "content": "x"}], PARAMS))
    assert seen[0].headers["authorization"] == "Bearer sk-from-file"


def test_the_loader_reads_the_route_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "route.json"
    path.write_text(_route().model_dump_json())
    runtime = load_upstream(path, FlavorOptions())
    assert runtime.info().context_length == 8192
    assert runtime.count_tokens("x" * 30) == 10
    with pytest.raises(InvalidRequestError, match="generative model"):
        runtime.predict(None)  # type: ignore[arg-type]
    path.write_text('{"base_url": "ftp://x", "upstream_model": "m"}')
    with pytest.raises(ModelLoadError, match="base_url"):
        load_upstream(path, FlavorOptions())


def test_a_whole_call_is_bounded_by_the_total_timeout() -> None:
    """An upstream that sends a byte now and then (never a newline, never a read timeout) is
    cut at the route's total_timeout_s: a 504."""
    now = [0.0]

    def drip() -> Iterator[bytes]:
        yield _sse(_delta("a"))
        for _ in range(100):  # (finite: without the bound the test fails, never hangs)
            now[0] += 1.0  # each byte comes a second later, well within timeout_s
            yield b" "

    route = _route(timeout_s=5, total_timeout_s=30)
    runtime = UpstreamRuntime(
        route,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=drip())),
        clock=lambda: now[0],
    )
    with pytest.raises(UpstreamTimeoutError, match="total 30 s"):
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert 30 <= now[0] <= 31
    assert runtime.breaker.state == "closed"  # one failure of three


@pytest.mark.parametrize(
    "event",
    [
        {"choices": "nope"},
        {"choices": ["nope"]},
        {"choices": [{"delta": {"content": 7}}]},
        {"choices": [], "usage": {"prompt_tokens": "many"}},
        [1, 2],
    ],
)
def test_an_event_out_of_shape_is_a_502_not_a_crash(event: Any) -> None:
    answer = _sse(event, "[DONE]")
    runtime, _ = _runtime(lambda r: httpx.Response(200, content=answer))
    with pytest.raises(UpstreamError, match="unreadable event"):
        list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))


def test_a_credential_that_is_not_a_key_is_not_sent_and_not_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pem = tmp_path / "server.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in ({"api_key_file": str(pem)}, {"api_key_file": str(fifo)}):
        runtime, seen = _runtime(
            lambda r: httpx.Response(200, content=ANSWER),
            api_key_env=None,
            breaker_failures=1,
            **source,
        )
        with pytest.raises(UpstreamError, match=r"not an API key|not a regular file") as failed:
            list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
        assert "MIIEv" not in failed.value.message
        assert seen == []
        assert runtime.breaker.state == "closed"  # this server's configuration, not the upstream


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest", "https://[fe80::1]/v1", "http://0.0.0.0:8000/v1"]
)
def test_a_route_to_a_metadata_or_unspecified_address_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="link-local"):
        _route(base_url=url, allow_insecure_http=True)


def test_a_relative_key_file_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="absolute path"):
        _route(api_key_env=None, api_key_file="secrets/key")


def test_a_credential_outside_the_servers_allowlist_is_refused_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A route stored before the allowlist narrowed (or registered by another process) names
    the store's URI, a file outside the secrets folder, or a link out of it: a 503 naming the
    rule, nothing read into the message, nothing sent, the breaker untouched."""
    monkeypatch.setenv("MEDSERVE_STORE_URI", "postgresql+psycopg://u:hunter2@db/x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside-key"
    outside.write_text("sk-outside\n")
    link = tmp_path / "link"
    link.symlink_to(outside)
    try:
        for source, rule in (
            ({"api_key_env": "MEDSERVE_STORE_URI"}, "MEDSERVE_UPSTREAM_CREDENTIALS"),
            ({"api_key_env": None, "api_key_file": str(outside)}, "MEDSERVE_UPSTREAM_SECRETS_DIR"),
            ({"api_key_env": None, "api_key_file": str(link)}, "MEDSERVE_UPSTREAM_SECRETS_DIR"),
        ):
            runtime, seen = _runtime(
                lambda r: httpx.Response(200, content=ANSWER), breaker_failures=1, **source
            )
            with pytest.raises(UpstreamCredentialNotAllowedError, match=rule) as refused:
                list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
            assert "hunter2" not in refused.value.message
            assert "sk-outside" not in refused.value.message
            assert refused.value.code == "upstream_credential_not_allowed"
            assert http_errors.status_for(refused.value) == 503
            assert seen == []
            assert runtime.breaker.state == "closed"
    finally:
        outside.unlink()


def test_the_allowlist_setting_admits_a_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_LLM_KEY", "sk-cluster")
    route = _route(api_key_env="CLUSTER_LLM_KEY")
    assert CredentialPolicy.from_settings().problem(route) is not None
    with pytest.raises(InvalidRequestError, match="MEDSERVE_UPSTREAM_CREDENTIALS"):
        CredentialPolicy.from_settings().check_registration(route)
    monkeypatch.setenv("MEDSERVE_UPSTREAM_CREDENTIALS", '["CLUSTER_LLM_KEY"]')
    runtime, seen = _runtime(
        lambda r: httpx.Response(200, content=ANSWER), api_key_env="CLUSTER_LLM_KEY"
    )
    list(runtime.chat([{"role": "user", "content": "x"}], PARAMS))
    assert seen[0].headers["authorization"] == "Bearer sk-cluster"
