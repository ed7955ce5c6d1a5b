"""The ``openai-upstream`` runtime: a ``GenerativeRuntime`` whose tokens come from another
OpenAI-compatible server, named by the version's route (``upstream_route.py``).

Because it is a runtime like the GGUF one, the API's pipeline applies to it unchanged: the PHI
policy runs before ``chat``/``complete`` are called, so the upstream only ever receives the
redacted text (redaction happens on this box); budgets admit and settle the call; the audit
entry is written; the answer (streamed or whole) passes the output scan on its way back.

Calls always stream from the upstream (so a streamed answer passes through as it comes) and ask
for the upstream's usage (``stream_options.include_usage``): where the upstream reports it, the
budget settles on its counts; where it does not (llama.cpp's server), the completion is counted
one token per content delta and the prompt stays at the admission's estimate.

Failures, each an OpenAI-shaped error by the HTTP layer:

- the upstream answered an error status, broke its connection, or the stream ended before its
  end: ``UpstreamError`` (502);
- no byte within ``timeout_s`` (or no connection within ``connect_timeout_s``):
  ``UpstreamTimeoutError`` (504);
- the circuit breaker is open: ``UpstreamUnavailableError`` (503), nothing is sent.

A call that failed before any answer came (connection refused, 429, 5xx) is retried with
exponential backoff and full jitter (tenacity); once tokens flowed it never is (the caller would get
some text twice). The upstream's own error bodies are never passed on: they may echo the prompt.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from medserve.core.errors import (
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from medserve.core.runtimes._common import versions
from medserve.core.runtimes.base import RuntimeMetadata, TensorSpec
from medserve.features.llm.protocol import Chunk, FinishReason, GenerationParams, GenerativeInfo
from medserve.features.llm.upstream_route import FLAVOR, CredentialPolicy, UpstreamRoute

_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _RetryableError(UpstreamError):
    """A failure before the answer started that a retry may cure; the last one is raised as
    it is (an ``UpstreamError``)."""


class _RetryableTimeoutError(UpstreamTimeoutError):
    pass


class CircuitBreaker:
    """Closed, open, half-open, per route and worker process.

    ``breaker_failures`` consecutive failures open it; while open every call is refused at once
    (``UpstreamUnavailableError``) for ``breaker_reset_s``; then one trial call goes through
    (half-open): its success closes the breaker, its failure opens it again. A failure is the
    upstream's (no connection, a timeout, 5xx, a broken stream), never the request's (4xx).

    Hand-written (about thirty lines) rather than pybreaker: pybreaker holds its lock for the
    whole guarded call, which would let one streamed generation through the route at a time.

    Calls run concurrently (one thread each), so ``before`` tells the call whether it is the
    trial, and the call hands that back to ``success``/``failure``/``release``: only the trial's
    own outcome closes or reopens a half-open breaker, or frees the trial slot (a call that
    started before the breaker opened and ends during the trial does not).
    """

    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._trial or self.clock() - self._opened_at >= self.reset_s:
                return "half-open"
            return "open"

    def before(self) -> bool:
        """Let a call through (``True``: it is the half-open trial), or refuse it (open, or
        half-open with its trial under way)."""
        with self._lock:
            if self._opened_at is None:
                return False
            waited = self.clock() - self._opened_at
            if waited >= self.reset_s and not self._trial:
                self._trial = True  # this call is the trial
                return True
            left = max(0.0, self.reset_s - waited)
        raise UpstreamUnavailableError(
            f"the upstream failed {self.failures} times in a row: its circuit breaker is open, "
            f"calls are refused for {left:.0f} s more (nothing was sent)"
        )

    def success(self, trial: bool = False) -> None:
        """The upstream answered: closed (a late success of an older call closes it too, the
        upstream is up; a trial still under way then finds it closed)."""
        with self._lock:
            self._count = 0
            self._opened_at = None
            if trial or not self._trial:
                self._trial = False

    def failure(self, trial: bool = False) -> None:
        with self._lock:
            self._count += 1
            if trial:  # the trial failed: open again for reset_s, a new trial after that
                self._trial = False
                self._opened_at = self.clock()
            elif self._opened_at is None and self._count >= self.failures:
                self._opened_at = self.clock()

    def release(self, trial: bool = False) -> None:
        """A call that ended neither way (the caller went away): if it was the trial, another
        call may be the trial."""
        with self._lock:
            if trial:
                self._trial = False


class UpstreamRuntime:
    """``Runtime`` (registry, model manager) and ``GenerativeRuntime`` (the API) over a route."""

    flavor = FLAVOR
    # The API holds a stream's response head until the first token or error has come, so that
    # an upstream that fails before answering gets its 502/504/503, not a 200 and an error event.
    remote = True

    def __init__(
        self,
        route: UpstreamRoute,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy: CredentialPolicy | None = None,
    ):
        self.route = route
        # where the route may read its credential from: the server's settings, checked per call
        self.policy = policy or CredentialPolicy.from_settings()
        self.clock = clock
        self.breaker = CircuitBreaker(route.breaker_failures, route.breaker_reset_s, clock)
        timeout = httpx.Timeout(route.timeout_s, connect=route.connect_timeout_s)
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._info = GenerativeInfo(
            architecture="upstream",
            context_length=route.context_length,
            extra={"upstream": route.host, "upstream_model": route.upstream_model},
        )
        self._metadata = RuntimeMetadata(
            runtime=f"{FLAVOR} ({route.host})",
            task="generation",
            n_features=1,
            outputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            library_versions=versions("httpx", "tenacity"),
        )

    # -- Runtime --------------------------------------------------------------------------------
    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        raise InvalidRequestError(
            "this is a generative model (an upstream route): call it through the OpenAI-"
            "compatible API (POST /openai/v1/chat/completions or /openai/v1/completions)"
        )

    def close(self) -> None:
        self._client.close()

    # -- GenerativeRuntime ----------------------------------------------------------------------
    def info(self) -> GenerativeInfo:
        return self._info

    def count_tokens(self, text: str) -> int:
        """An estimate (see ``UpstreamRoute.chars_per_token``): the upstream's tokenizer is not
        here; the budget settles on the upstream's own counts where it reports them."""
        return max(1, math.ceil(len(text) / self.route.chars_per_token))

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        body = self._body(params)
        body["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self._generate("/chat/completions", body, _delta_text)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        body = self._body(params)
        body["prompt"] = prompt
        return self._generate("/completions", body, lambda c: c.get("text"))

    # -- internals ------------------------------------------------------------------------------
    def _body(self, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.route.upstream_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": int(params.max_tokens),
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = int(params.seed)
        if params.grammar:
            if self.route.grammar != "gbnf":
                raise InvalidRequestError(
                    "this model is an upstream route that does not take a grammar: "
                    "response_format (json_object, json_schema) is not available through it "
                    "(the route's 'grammar' setting)"
                )
            body["grammar"] = params.grammar
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "text/event-stream"}
        key = self.route.api_key(self.policy)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], deadline: float
    ) -> httpx.Response:
        """One attempt: the response with an OK status, its body not read yet. Its waits are
        cut to what is left of the call's ``total_timeout_s``."""
        left = deadline - self.clock()
        if left <= 0:
            raise self._overdue()
        timeout = httpx.Timeout(
            min(self.route.timeout_s, left), connect=min(self.route.connect_timeout_s, left)
        )
        request = self._client.build_request(
            "POST", self.route.base_url + path, json=body, headers=headers, timeout=timeout
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.ConnectTimeout as exc:
            raise _RetryableTimeoutError(
                f"no connection to the upstream {self.route.host} within "
                f"{self.route.connect_timeout_s:g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._timed_out(deadline, "did not answer within") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise _RetryableError(
                f"could not reach the upstream {self.route.host} ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"the call to the upstream {self.route.host} failed ({type(exc).__name__})"
            ) from exc
        if response.status_code == 200:
            return response
        response.close()  # its body is not read: it may echo the prompt
        status = response.status_code
        what = f"the upstream {self.route.host} answered HTTP {status}"
        if status in _RETRIED_STATUSES:
            raise _RetryableError(what)
        if status in (401, 403):
            raise _RefusedError(f"{what}: it refused the route's credential")
        raise _RefusedError(f"{what}: it refused the request")

    def _timed_out(self, deadline: float, what: str) -> UpstreamTimeoutError:
        """A read timeout: the route's total reached, or ``timeout_s`` without a byte."""
        if self.clock() >= deadline:
            return self._overdue()
        return UpstreamTimeoutError(
            f"the upstream {self.route.host} {what} {self.route.timeout_s:g} s"
        )

    def _overdue(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"the upstream {self.route.host} did not finish within the route's total "
            f"{self.route.total_timeout_s:g} s"
        )

    def _open(
        self, path: str, body: dict[str, Any], headers: dict[str, str], deadline: float
    ) -> httpx.Response:
        retrying = Retrying(
            # no retry whose wait would end past the deadline
            stop=stop_after_attempt(self.route.retries + 1)
            | stop_before_delay(self.route.total_timeout_s),
            # "full jitter": a random wait up to backoff_s * 2^n, at most backoff_max_s
            wait=wait_random_exponential(
                multiplier=self.route.backoff_s, max=self.route.backoff_max_s
            ),
            retry=retry_if_exception(lambda e: isinstance(e, _RETRYABLE)),
            reraise=True,
        )
        response: httpx.Response | None = None
        for attempt in retrying:
            with attempt:
                response = self._send(path, body, headers, deadline)
        assert response is not None
        return response

    def _generate(
        self,
        path: str,
        body: dict[str, Any],
        text_of: Callable[[dict[str, Any]], Any],
    ) -> Iterator[Chunk]:
        # the credential first: a missing one is this server's configuration, not a failure
        # of the upstream for the breaker to count
        headers = self._headers()
        trial = self.breaker.before()
        deadline = self.clock() + self.route.total_timeout_s
        settled = False
        try:
            response = self._open(path, body, headers, deadline)
            try:
                yield from self._read(response, text_of, deadline)
            finally:
                response.close()
            self.breaker.success(trial)
            settled = True
        except _RefusedError:
            self.breaker.success(trial)  # it answered: the upstream is up, the request was not
            settled = True
            raise
        except UpstreamError:
            self.breaker.failure(trial)
            settled = True
            raise
        finally:
            if not settled:  # the caller went away (or a bug): neither outcome is known
                self.breaker.release(trial)

    def _lines(self, response: httpx.Response, deadline: float) -> Iterator[str]:
        """The body's lines, the deadline checked at each piece received (not each line: an
        upstream dripping bytes without a newline is cut too) and a line's length bounded."""
        rest = ""
        for text in response.iter_text():
            if self.clock() >= deadline:
                raise self._overdue()
            *lines, rest = _NEWLINE.split(rest + text)
            if len(rest) > _MAX_LINE:
                raise UpstreamError(
                    f"the upstream {self.route.host} sent a line over {_MAX_LINE} characters"
                )
            yield from lines
        if rest:
            yield rest

    def _read(
        self,
        response: httpx.Response,
        text_of: Callable[[dict[str, Any]], Any],
        deadline: float,
    ) -> Iterator[Chunk]:
        """Server-sent events to chunks; the stream must end with a finish reason or
        ``[DONE]``, else it was cut. An event that is not what OpenAI's API sends is the
        upstream's failure (a 502), never this server's (a 500)."""
        host = self.route.host
        finish: FinishReason | None = None
        done = False
        deltas = 0
        prompt_tokens = completion_tokens = 0
        unreadable = f"the upstream {host} sent an unreadable event"
        try:
            for line in self._lines(response, deadline):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError(unreadable) from exc
                if not isinstance(event, dict):
                    raise UpstreamError(unreadable)
                if "error" in event:  # its message is not passed on: it may echo the prompt
                    raise UpstreamError(f"the upstream {host} reported an error mid-answer")
                usage = event.get("usage")
                if isinstance(usage, dict):
                    prompt_tokens = _count(usage.get("prompt_tokens"), unreadable)
                    completion_tokens = _count(usage.get("completion_tokens"), unreadable)
                choices = event.get("choices") or []
                if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                    raise UpstreamError(unreadable)
                for choice in choices:
                    text = text_of(choice)
                    if text is not None and not isinstance(text, str):
                        raise UpstreamError(unreadable)
                    reason = choice.get("finish_reason")
                    if reason is not None:
                        finish = "length" if reason == "length" else "stop"
                    if text:
                        deltas += 1
                        yield Chunk(text, None, prompt_tokens, completion_tokens or deltas)
        except httpx.TimeoutException as exc:
            raise self._timed_out(deadline, "stopped sending mid-answer for") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"the upstream {host} broke its answer off ({type(exc).__name__})"
            ) from exc
        if not done and finish is None:
            raise UpstreamError(f"the upstream {host} ended its answer before finishing it")
        yield Chunk("", finish or "stop", prompt_tokens, completion_tokens or deltas)


class _RefusedError(UpstreamError):
    """The upstream refused the request (4xx): answered, so not the upstream's failure."""


def _delta_text(choice: dict[str, Any]) -> Any:
    """A chat chunk's text (``choices[].delta.content``); ``None`` where it has none."""
    delta = choice.get("delta")
    return delta.get("content") if isinstance(delta, dict) else None


def _count(value: Any, unreadable: str) -> int:
    """A token count from the upstream's usage (absent: 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UpstreamError(unreadable)
    return value


_NEWLINE = re.compile(r"\r\n|\r|\n")
_MAX_LINE = 1 << 20  # one server-sent event's line: an answer's delta is far shorter


_RETRYABLE = (_RetryableError, _RetryableTimeoutError)
