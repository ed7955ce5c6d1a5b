"""The OpenAI-compatible API, transport-free: requests, the call pipeline, response bodies.

``serving/extensions/llm.py`` maps HTTP onto this (routes, credentials, status codes, SSE); this
module does what a call needs once its caller and model are known, in this order:

1. parse and check the request (OpenAI's names; what medserve does not do is refused naming
   the parameter, never ignored in a way that changes the answer);
2. scan every text for patient identifiers and apply the PHI policy (``phi_policy.py``): the
   model only ever receives the redacted text (or nothing: block, or a detector failure);
3. count the prompt's tokens, check the key's per-call limits, reserve the call's tokens in the
   shared budgets (``budgets.py``);
4. run the blocking generation in a generation thread and hand its chunks to the event loop
   through an asyncio queue; scan the answer (a stream through the hold-back redactor);
5. settle the budget, count the metrics and journal the audit entry (before the answer, or
   for a stream a "started" entry before the first chunk and a "finished" one at its end or
   when the caller goes away).

Nothing kept about a call holds its text: the audit entry has the model, version, key, token
counts, latency, finish reason, the PHI categories found and keyed hashes (HMAC-SHA256 with the
home's PHI salt) of the prompt as sent and of the answer as returned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medserve.core.audit import AuditEntry, AuditLog
from medserve.core.context import Principal
from medserve.core.errors import (
    ComputationFailedError,
    InvalidRequestError,
    MedserveError,
    UpstreamError,
)
from medserve.core.loaded_model import LoadedModel
from medserve.features.llm import json_check, sse, usage
from medserve.features.llm.budgets import (
    Budgets,
    Limits,
    LlmSettings,
    Reservation,
    check_request,
    version_context,
)
from medserve.features.llm.phi_policy import (
    PhiBlockedError,
    PhiPolicy,
    PhiScanner,
    StreamRedactor,
    effective_policy,
)
from medserve.features.llm.protocol import (
    Chunk,
    EmbeddingRuntime,
    GenerationParams,
    GenerativeRuntime,
)

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completion", "embeddings"]


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class InvalidParamError(InvalidRequestError):
    """400 naming the parameter (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message, details=[{"field": param or "", "rule": code or "invalid"}])
        self.param = param
        self.openai_code = code


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = Field(min_length=1, max_length=300)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Sampling(_Request):
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="One choice per call.")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise InvalidParamError("stop takes up to 4 non-empty strings", "stop")
        return stops


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None


class EmbeddingRequest(_Request):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


_R = TypeVar("_R", bound=_Request)
_T = TypeVar("_T")

# Parameters of OpenAI's API that change an answer and that medserve does not implement: a
# request naming one (with a value that asks for it) is refused, not half-served.
_UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "audio",
    "prediction",
    "best_of",
)


def parse_request(kind: type[_R], body: Any) -> _R:
    """The request, or a 400 naming the first parameter that is wrong."""
    if not isinstance(body, dict):
        raise InvalidParamError("the body must be a JSON object", None)
    for name in _UNSUPPORTED:
        value = body.get(name)
        if value not in (None, False, [], {}) and not (name == "best_of" and value == 1):
            raise InvalidParamError(
                f"{name!r} is not supported by this server", name, "unsupported_parameter"
            )
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int)) or None
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise InvalidParamError(f"{where}: {error.get('msg', 'invalid')}", param) from exc


def model_reference(value: str) -> tuple[str, str]:
    """``name`` (its ``production`` alias), ``name@alias`` or ``name@version``."""
    name, _, ref = value.partition("@")
    if not name or (value.count("@") > 1) or (_ and not ref):
        raise InvalidParamError(
            "model must be a registered name, name@alias or name@version", "model"
        )
    return name, ref or "production"


# --------------------------------------------------------------------------------------------
# response_format -> grammar
# --------------------------------------------------------------------------------------------

# Any JSON object (llama.cpp's grammars/json.gbnf with an object at the root: OpenAI's JSON mode
# answers an object).
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
""".strip()


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    """The GBNF grammar the answer must follow, or None for free text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JSON_OBJECT_GBNF
    spec = response_format.json_schema
    if spec is None or not spec.json_schema:
        raise InvalidParamError(
            "response_format of type json_schema needs json_schema.schema",
            "response_format.json_schema",
        )
    try:
        # lazy import: llama-cpp-python (the [llm] extra) converts a JSON schema to GBNF
        from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415
    except ImportError as exc:
        raise InvalidParamError(
            "response_format json_schema needs llama-cpp-python on the server (the [llm] extra)",
            "response_format",
            "unsupported_parameter",
        ) from exc
    try:
        return str(json_schema_to_gbnf(json.dumps(spec.json_schema)))
    except Exception as exc:  # the converter's own errors: the schema is the caller's
        raise InvalidParamError(
            f"response_format.json_schema.schema cannot be turned into a grammar "
            f"({type(exc).__name__})",
            "response_format.json_schema.schema",
        ) from exc


# --------------------------------------------------------------------------------------------
# The call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who calls, with the key's language-model settings (``Limits`` are the key's own)."""

    principal: Principal
    phi_policy: str | None = None
    phi_allow: bool = False
    limits: Limits = field(default_factory=Limits)
    client: str | None = None
    patient_hash: str | None = None

    @property
    def budget_key(self) -> str:
        return self.principal.key_id or self.principal.subject


class _Finished:
    """The generation thread's end marker."""


_FINISHED = _Finished()


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Call:
    """One admitted call: what its audit entry, metrics and budget settlement need."""

    endpoint: Endpoint
    caller: Caller
    model: LoadedModel
    policy: PhiPolicy
    request_id: str
    prompt_hash: str
    prompt_categories: set[str]
    reservation: Reservation
    prompt_tokens: int
    started: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))
    queued_s: float = 0.0
    first_token_at: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    done: bool = False


class LlmService:
    """The pipeline (see the module docstring); one per worker process."""

    def __init__(
        self,
        settings: LlmSettings,
        budgets: Budgets,
        executor: Executor,
        *,
        scanner: PhiScanner | None = None,
        audit: AuditLog | None = None,
        salt: bytes,
    ) -> None:
        if not salt:  # a public fallback key would make the journal's hashes guessable
            raise ValueError("LlmService needs the home's non-empty PHI salt")
        self.settings = settings
        self.defaults = Limits.defaults(settings)
        self.budgets = budgets
        self.executor = executor
        self.scanner = scanner or PhiScanner()
        self.audit = audit
        self.salt = salt

    # -- helpers ----------------------------------------------------------------------------
    def hasher(self) -> hmac.HMAC:
        """An HMAC-SHA256 keyed with the home's salt: journaled hashes of prompts, answers
        and grounding inputs link equal texts without revealing them."""
        return hmac.new(self.salt, digestmod=hashlib.sha256)

    def keyed_hash(self, data: str | bytes) -> str:
        hasher = self.hasher()
        hasher.update(data.encode("utf-8") if isinstance(data, str) else data)
        return "hm_" + hasher.hexdigest()[:32]

    def policy(self, caller: Caller, model: LoadedModel) -> PhiPolicy:
        """The PHI policy of ``caller`` on ``model`` (public: the console's chat applies it too)."""
        return effective_policy(
            model.version.serving_config.get("phi_policy"),
            caller.phi_policy,
            caller.phi_allow,
            repr(model.name),
        )

    @staticmethod
    def generative(model: LoadedModel) -> GenerativeRuntime:
        runtime = model.runtime
        if not isinstance(runtime, GenerativeRuntime):
            kind = "an embedding model" if isinstance(runtime, EmbeddingRuntime) else "not"
            raise InvalidParamError(
                f"model {model.name!r} is {kind} a generative language model", "model"
            )
        return runtime

    @staticmethod
    def embedding(model: LoadedModel) -> EmbeddingRuntime:
        runtime = model.runtime
        if not isinstance(runtime, EmbeddingRuntime):
            raise InvalidParamError(f"model {model.name!r} is not an embedding model", "model")
        return runtime

    def _admit(
        self,
        endpoint: Endpoint,
        caller: Caller,
        model: LoadedModel,
        texts: Sequence[str],
        param: str,
        count: Callable[[list[str]], int],
        max_tokens: int,
        context: int,
        raw: str,
        request_id: str,
    ) -> tuple[_Call, list[str]]:
        """Steps 2-3 (in a thread: the detector, the tokenizer and the budget file do I/O or
        CPU work): the texts the model may see, and the admitted call."""
        policy = self.policy(caller, model)
        scans = self.scanner.scan_all(texts, policy, param)
        categories: set[str] = set().union(*(s.categories for s in scans)) if scans else set()
        for category in categories:
            usage.PHI_FOUND.labels(model.name, "prompt", category).inc()
        sent = [s.text for s in scans]
        prompt_tokens = count(sent)
        limits = self.defaults.over(caller.limits)
        check_request(
            limits,
            prompt_tokens,
            max_tokens,
            context,
            version_context(model.version.serving_config, model.name, model.number),
            f"version {model.number} of {model.name!r}",
        )
        reservation = self.budgets.admit(caller.budget_key, limits, prompt_tokens + max_tokens)
        call = _Call(
            endpoint=endpoint,
            caller=caller,
            model=model,
            policy=policy,
            request_id=request_id,
            prompt_hash=self.keyed_hash(raw),
            prompt_categories=categories,
            reservation=reservation,
            prompt_tokens=prompt_tokens,
        )
        return call, sent

    async def _in_thread(
        self,
        endpoint: Endpoint,
        caller: Caller,
        model: LoadedModel,
        request_id: str,
        work: Callable[[], _T],
    ) -> _T:
        """``work`` (admission: detector, tokenizer, budget file) in a thread; a PHI block is
        audited here, on the event loop (the journal takes appends from the loop only)."""
        try:
            return await asyncio.to_thread(work)
        except PhiBlockedError as blocked:
            self._refused_entry(endpoint, caller, model, blocked.categories, request_id)
            raise

    def _refused_entry(
        self,
        endpoint: Endpoint,
        caller: Caller,
        model: LoadedModel,
        categories: Sequence[str],
        request_id: str,
    ) -> None:
        if self.audit is None:
            return
        detail = {"refused": "phi_blocked", "phi_prompt": sorted(categories)}
        action = f"llm.{endpoint}.refused"
        self.audit.enqueue(self._entry(action, caller, model, 422, detail, rid=request_id))

    def _entry(
        self,
        action: str,
        caller: Caller,
        model: LoadedModel,
        outcome: int,
        detail: dict[str, Any],
        *,
        rid: str,
    ) -> AuditEntry:
        principal = caller.principal
        return AuditEntry(
            actor=principal.subject,
            key_id=principal.key_id,
            action=action,
            model=model.name,
            version=str(model.number),
            client=caller.client,
            outcome=outcome,
            request_id=rid,
            patient_hash=caller.patient_hash,
            detail=orjson.dumps(detail).decode(),
        )

    def _call_detail(self, call: _Call, completion_hash: str | None = None) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "endpoint": call.endpoint,
            "phi_policy": call.policy.word,
            "phi_prompt": sorted(call.prompt_categories),
            "prompt_tokens": call.prompt_tokens,
            "prompt_hmac": call.prompt_hash,
            "reserved_tokens": call.reservation.tokens,
        }
        if call.done:
            detail.update(
                completion_tokens=call.completion_tokens,
                finish_reason=call.finish_reason,
                latency_ms=round((time.monotonic() - call.started) * 1000, 1),
                queue_ms=round(call.queued_s * 1000, 1),
            )
            if call.first_token_at is not None:
                detail["ttft_ms"] = round((call.first_token_at - call.started) * 1000, 1)
            if completion_hash is not None:
                detail["completion_hmac"] = completion_hash
        return detail

    def _finish(
        self,
        call: _Call,
        finish_reason: str,
        completion_hash: str | None,
        completion_categories: set[str],
        action: str,
    ) -> None:
        """Settle, count and audit a call that ended (however it ended). Never raises for the
        budget file (the answer is given; a failed settlement leaves the reservation counted,
        the stricter side)."""
        call.done = True
        call.finish_reason = finish_reason
        model, version = call.model.name, str(call.model.number)
        usage.CALLS.labels(model, version, call.endpoint, finish_reason).inc()
        key = call.caller.principal.key_id or "-"
        usage.TOKENS.labels(model, version, key, "prompt").inc(call.prompt_tokens)
        usage.TOKENS.labels(model, version, key, "completion").inc(call.completion_tokens)
        usage.QUEUE_SECONDS.labels(model, version).observe(call.queued_s)
        for category in completion_categories:
            usage.PHI_FOUND.labels(model, "completion", category).inc()
        if call.first_token_at is not None:
            usage.TIME_TO_FIRST_TOKEN.labels(model, version).observe(
                call.first_token_at - call.started
            )
            spent = time.monotonic() - call.first_token_at
            if call.completion_tokens > 1 and spent > 0:
                usage.TOKENS_PER_SECOND.labels(model, version).observe(
                    (call.completion_tokens - 1) / spent
                )
        self.executor.submit(
            self._settle, call.reservation, model, call.prompt_tokens, call.completion_tokens
        )
        if self.audit is not None:
            detail = self._call_detail(call, completion_hash)
            detail["phi_completion"] = sorted(completion_categories)
            entry = self._entry(action, call.caller, call.model, 200, detail, rid=call.request_id)
            self.audit.enqueue(entry)

    def _settle(self, reservation: Reservation, model: str, prompt: int, completion: int) -> None:
        try:
            self.budgets.settle(reservation, model, prompt, completion)
        except Exception:  # the reservation stays counted: the stricter error
            log.exception("settling a language-model budget failed")

    def started_entry(self, call: _Call) -> None:
        """A stream's first entry, journaled before its first chunk is sent."""
        if self.audit is not None:
            self.audit.enqueue(
                self._entry(
                    f"llm.{call.endpoint}.started",
                    call.caller,
                    call.model,
                    200,
                    self._call_detail(call),
                    rid=call.request_id,
                )
            )

    # -- generation in a thread -------------------------------------------------------------
    async def _chunks(
        self, call: _Call, produce: Callable[[], Iterator[Chunk]]
    ) -> AsyncIterator[Chunk]:
        """The runtime's chunks, produced in a generation thread, as they come. Leaving early
        (the caller went away) stops the thread at its next chunk."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | _Finished | _Failed] = asyncio.Queue()
        stop = threading.Event()
        submitted = time.monotonic()

        def put(item: Chunk | _Finished | _Failed) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody listens any more
                stop.set()

        def work() -> None:
            call.queued_s = time.monotonic() - submitted
            iterator: Iterator[Chunk] | None = None
            try:
                iterator = produce()
                for chunk in iterator:
                    put(chunk)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the event loop, raised there
                put(_Failed(exc))
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):  # the answer is decided already
                        close()
                put(_FINISHED)

        self.executor.submit(work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Finished):
                    return
                if isinstance(item, _Failed):
                    if isinstance(item.error, UpstreamError | InvalidRequestError):
                        # an upstream's failure (502/504/503) or the runtime's refusal of the
                        # request (400) keeps its own status
                        raise item.error
                    raise ComputationFailedError(
                        f"the model failed while generating ({type(item.error).__name__})"
                    ) from item.error
                if item.text and call.first_token_at is None:
                    call.first_token_at = time.monotonic()
                call.completion_tokens = item.completion_tokens or call.completion_tokens
                if item.prompt_tokens:
                    call.prompt_tokens = item.prompt_tokens
                yield item
        finally:
            stop.set()

    # -- chat and completions ---------------------------------------------------------------
    async def prepare_chat(
        self, caller: Caller, model: LoadedModel, request: ChatRequest, request_id: str
    ) -> Generation:
        runtime = self.generative(model)
        max_tokens = (
            request.max_completion_tokens or request.max_tokens or self.settings.default_max_tokens
        )
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stops()),
            seed=request.seed,
            grammar=grammar_for(request.response_format),
            cache_key=caller.budget_key,  # the prompt prefix is reused within one key only
        )
        texts = [m.text() for m in request.messages]
        raw = orjson.dumps([[m.role, t] for m, t in zip(request.messages, texts, strict=True)])

        def admit() -> tuple[_Call, list[str]]:
            context = runtime.info().context_length
            return self._admit(
                "chat",
                caller,
                model,
                texts,
                "messages",
                lambda sent: sum(runtime.count_tokens(t) + 4 for t in sent),
                max_tokens,
                context,
                raw.decode(),
                request_id,
            )

        call, sent = await self._in_thread("chat", caller, model, request_id, admit)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": t}
            for m, t in zip(request.messages, sent, strict=True)
        ]
        fmt = request.response_format
        return Generation(
            self,
            call,
            lambda: runtime.chat(messages, params),
            json_format=params.grammar is not None,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            schema=fmt.json_schema.json_schema if fmt and fmt.json_schema else None,
        )

    async def prepare_completion(
        self, caller: Caller, model: LoadedModel, request: CompletionRequest, request_id: str
    ) -> Generation:
        runtime = self.generative(model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise InvalidParamError("prompt takes one text per call", "prompt")
        if request.echo or request.suffix:
            raise InvalidParamError(
                "echo and suffix are not supported by this server",
                "echo" if request.echo else "suffix",
                "unsupported_parameter",
            )
        max_tokens = request.max_tokens or min(16, self.settings.default_max_tokens)
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stops()),
            seed=request.seed,
            cache_key=caller.budget_key,
        )

        def admit() -> tuple[_Call, list[str]]:
            return self._admit(
                "completion",
                caller,
                model,
                prompts,
                "prompt",
                lambda sent: sum(runtime.count_tokens(t) for t in sent),
                max_tokens,
                runtime.info().context_length,
                prompts[0],
                request_id,
            )

        call, sent = await self._in_thread("completion", caller, model, request_id, admit)
        return Generation(
            self,
            call,
            lambda: runtime.complete(sent[0], params),
            json_format=False,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
        )

    # -- embeddings -------------------------------------------------------------------------
    async def embeddings(
        self, caller: Caller, model: LoadedModel, request: EmbeddingRequest, request_id: str
    ) -> dict[str, Any]:
        runtime = self.embedding(model)
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts or len(texts) > 2048:
            raise InvalidParamError("input takes 1 to 2048 texts", "input")
        if request.dimensions is not None and request.dimensions != runtime.dimensions():
            raise InvalidParamError(
                f"dimensions: model {model.name!r} gives {runtime.dimensions()}-dimensional "
                "vectors and cannot shorten them",
                "dimensions",
            )

        def admit() -> tuple[_Call, list[str]]:
            return self._admit(
                "embeddings",
                caller,
                model,
                texts,
                "input",
                lambda sent: sum(runtime.count_tokens(t) for t in sent),
                0,
                0,
                orjson.dumps(texts).decode(),
                request_id,
            )

        call, sent = await self._in_thread("embeddings", caller, model, request_id, admit)
        submitted = time.monotonic()

        def embed() -> np.ndarray:
            call.queued_s = time.monotonic() - submitted
            return np.asarray(runtime.embed(sent), dtype=np.float32)

        try:
            vectors = np.ascontiguousarray(
                await asyncio.get_running_loop().run_in_executor(self.executor, embed)
            )
        except Exception as exc:
            self._finish(call, "error", None, set(), "llm.embeddings")
            raise ComputationFailedError(
                f"the model failed to embed ({type(exc).__name__})"
            ) from exc
        call.first_token_at = time.monotonic()
        self._finish(call, "stop", None, set(), "llm.embeddings")
        data = []
        for i, row in enumerate(vectors):
            embedding: Any = (
                base64.b64encode(row.astype("<f4").tobytes()).decode()
                if request.encoding_format == "base64"
                # the float32 row itself: the transport writes each value's shortest float32
                # form (orjson's OPT_SERIALIZE_NUMPY), ~40% fewer bytes than the float64 digits
                # of .tolist() and 3x cheaper for a client to parse; the same float32 back
                else row
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens},
        }


class Generation:
    """An admitted chat or completion call, answered whole (``answer``) or streamed
    (``stream``). Exactly one of them is used."""

    def __init__(
        self,
        service: LlmService,
        call: _Call,
        produce: Callable[[], Iterator[Chunk]],
        *,
        json_format: bool,
        include_usage: bool,
        schema: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.call = call
        self.produce = produce
        self.json_format = json_format
        self.schema = schema
        self.include_usage = include_usage
        chat = call.endpoint == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + call.request_id
        self.object = "chat.completion" if chat else "text_completion"
        self.action = f"llm.{call.endpoint}"
        self.failure: MedserveError | None = None  # the error a stream ended on

    @property
    def _output_policy(self) -> PhiPolicy:
        """An answer cannot be blocked after the fact: under block it is redacted."""
        return PhiPolicy.ALLOW if self.call.policy is PhiPolicy.ALLOW else PhiPolicy.REDACT

    def _usage(self) -> dict[str, int]:
        call = self.call
        return {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        }

    def _head(self) -> dict[str, Any]:
        model = self.call.model
        return {
            "id": self.id,
            "object": self.object,
            "created": self.call.created,
            "model": model.name,
            "system_fingerprint": f"{model.name}@{model.number}",
        }

    async def answer(self) -> dict[str, Any]:
        """The whole answer (journaled before it is returned)."""
        call, service = self.call, self.service
        parts: list[str] = []
        finish = "stop"
        try:
            async for chunk in service._chunks(call, self.produce):
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
        except BaseException:
            service._finish(call, "error", None, set(), self.action)
            raise
        try:
            scan = await asyncio.to_thread(
                service.scanner.scan, "".join(parts), self._output_policy, "completion"
            )
        except MedserveError:
            service._finish(call, "error", None, set(), self.action)
            raise
        refused = self._broken_json(finish, "".join(parts), scan.text)
        if refused is not None:
            finish = json_check.CONTENT_FILTER
        service._finish(call, finish, service.keyed_hash(scan.text), scan.categories, self.action)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if call.endpoint == "chat":
            choice["message"] = {"role": "assistant", "content": scan.text, "refusal": refused}
        else:
            choice["text"] = scan.text
        return {**self._head(), "choices": [choice], "usage": self._usage()}

    def _broken_json(self, finish: str, raw: str, sent: str) -> str | None:
        """The refusal to send when redaction broke a JSON answer (``json_check``); None when
        it is not a JSON answer, was cut by max_tokens (``length`` says so already), or was not
        changed by the redaction, or is still valid."""
        if not self.json_format or finish != "stop" or sent == raw:
            return None
        reason = json_check.problem(sent, self.schema)
        return None if reason is None else json_check.refusal(reason)

    def _chunk(
        self, text: str | None, finish: str | None, first: bool = False, refusal: str | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.call.endpoint == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if refusal is not None:
                delta["refusal"] = refusal
            choice["delta"] = delta
            body = {**self._head(), "object": "chat.completion.chunk", "choices": [choice]}
        else:
            choice["text"] = text or ""
            body = {**self._head(), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return sse.event(body)

    def start_stream(self) -> AsyncIterator[bytes]:
        """Journal the "started" entry (before the response starts: a trail that cannot take
        it refuses the call with a 503), then the events."""
        call, service = self.call, self.service
        try:
            service.started_entry(call)
        except MedserveError:  # nothing is generated: the reservation is given back
            service.executor.submit(
                service._settle, call.reservation, call.model.name, call.prompt_tokens, 0
            )
            raise
        return self.stream()

    async def stream(self) -> AsyncIterator[bytes]:
        """Server-sent events: a first chunk, the answer as it is released by the hold-back
        redactor, a last chunk with the finish reason, the usage chunk when asked, ``[DONE]``.
        The "finished" entry is journaled at the end, on an error, or when the caller goes away
        (``disconnected``); ``start_stream`` journals the "started" one first."""
        call, service = self.call, self.service
        redactor = StreamRedactor(
            service.scanner, self._output_policy, hold=service.settings.holdback_chars
        )
        hasher = service.hasher()
        finish: str | None = None
        outcome = "disconnected"
        raw: list[str] = []  # kept (in memory) only to re-check a JSON answer at its end
        sent: list[str] = []
        try:
            yield self._chunk("" if call.endpoint == "chat" else None, None, first=True)
            async for chunk in service._chunks(call, self.produce):
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.text:
                    if self.json_format:
                        raw.append(chunk.text)
                    released = await _release(redactor, chunk.text)
                    if released:
                        hasher.update(released.encode("utf-8"))
                        if self.json_format:
                            sent.append(released)
                        yield self._chunk(released, None)
            rest = await asyncio.to_thread(redactor.finish)
            if rest:
                hasher.update(rest.encode("utf-8"))
                sent.append(rest)
                yield self._chunk(rest, None)
            outcome = finish or "stop"
            refused = self._broken_json(outcome, "".join(raw), "".join(sent))
            if refused is not None:
                outcome = json_check.CONTENT_FILTER
            yield self._chunk(None, outcome, refusal=refused)
            if self.include_usage:
                body = {
                    **self._head(),
                    "object": "chat.completion.chunk" if call.endpoint == "chat" else self.object,
                    "choices": [],
                    "usage": self._usage(),
                }
                yield sse.event(body)
            yield sse.DONE
        except MedserveError as exc:  # the status is sent: the error is one more event
            outcome = "error"
            self.failure = exc  # seen by a route that holds the head (UpstreamRuntime.remote)
            yield sse.event(openai_error(exc, 500))
            yield sse.DONE
        finally:
            digest = "hm_" + hasher.hexdigest()[:32]
            service._finish(call, outcome, digest, redactor.categories, f"{self.action}.finished")


async def _release(redactor: StreamRedactor, text: str) -> str:
    """Feed the redactor; its scan is cheap (well under a millisecond per window) and runs on
    the loop only when it does not scan (held text), in a thread when it does."""
    if not redactor.scans(text):
        return redactor.feed(text)
    return await asyncio.to_thread(redactor.feed, text)


# --------------------------------------------------------------------------------------------
# Errors and the model list
# --------------------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (what its clients show)."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error(exc: MedserveError, status: int) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    param = getattr(exc, "param", None)
    code = getattr(exc, "openai_code", None) or getattr(exc, "limit", None) or exc.code
    if exc.code == "request_over_limit":
        code = getattr(exc, "limit", exc.code)
    body: dict[str, Any] = {
        "message": exc.message,
        "type": error_type(status),
        "param": param,
        "code": code,
    }
    categories = getattr(exc, "categories", None)
    if categories is not None:
        body["categories"] = categories
    return {"error": body}


def model_entry(model: LoadedModel, owner: str | None) -> dict[str, Any]:
    """A model of ``GET /openai/v1/models``."""
    created = model.version.created_at
    kind = "embedding" if isinstance(model.runtime, EmbeddingRuntime) else "chat"
    return {
        "id": model.name,
        "object": "model",
        "created": int(created.timestamp()) if created else 0,
        "owned_by": owner or "medserve",
        "version": model.number,
        "kind": kind,
    }


def is_language_model(model: LoadedModel) -> bool:
    return isinstance(model.runtime, GenerativeRuntime | EmbeddingRuntime)
