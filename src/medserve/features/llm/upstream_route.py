"""An upstream route: a registered model version that is served by another OpenAI-compatible
server (another medserve, vLLM, a llama.cpp server, a vendor's endpoint).

The version's artifact is the route itself, a small JSON document (content-addressed and
immutable like any artifact, so changing a route is registering a new version, and moving
``production`` from a local GGUF to an upstream is an alias move through the gate). It holds
where to send calls and how patiently, and a *reference* to the credential: the name of an
environment variable or the path of a secret file, read when a call is made. The secret itself
is never stored, logged or shown.

Which credentials a route may reference is the server's choice, not the route's
(``CredentialPolicy``): environment variables named ``MEDSERVE_UPSTREAM_KEY_*`` or listed in
``MEDSERVE_UPSTREAM_CREDENTIALS``, and files under ``MEDSERVE_UPSTREAM_SECRETS_DIR`` (default
``MEDSERVE_HOME/secrets``). Without it, whoever may register a model could make the server read
any variable (a database URI with its password) or single-line file and send it, as a bearer
token, to a URL of their choosing. The policy is checked when a route is registered (a 400) and
again at every call, on the server's own settings (a 503: a route registered elsewhere, or before
the allowlist was narrowed, sends nothing).

This module is light (pydantic and the settings only): the runtime (``upstream.py``: httpx,
tenacity) is imported by the flavor's loader (``upstream_flavor.py``) when a version of the
flavor loads.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medserve.core.errors import (
    InvalidRequestError,
    UpstreamCredentialNotAllowedError,
    UpstreamError,
)
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, current_user
from medserve.core.registry.signature import FeatureSpec, OutputSpec, Signature
from medserve.core.settings import Settings
from medserve.features.llm.invalid import invalid_request

if TYPE_CHECKING:
    from medserve.features.llm.api import Generation

FLAVOR = "openai-upstream"
ROUTE_FILENAME = "upstream-route.json"


MAX_KEY_BYTES = 8192  # an API key is a short token: a longer "secret file" is not one
KEY_ENV_PREFIX = "MEDSERVE_UPSTREAM_KEY_"  # variables with this prefix are always allowed


@dataclass(frozen=True)
class CredentialPolicy:
    """Where routes may take their API key from: environment variables named
    ``KEY_ENV_PREFIX*`` or listed in ``variables``, files under ``secrets_dir`` (after symbolic
    links are resolved, so a link inside it to /etc/... is outside it)."""

    variables: frozenset[str]
    secrets_dir: Path

    @classmethod
    def of(cls, variables: Iterable[str], secrets_dir: Path) -> CredentialPolicy:
        return cls(frozenset(variables), Path(os.path.realpath(secrets_dir)))

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CredentialPolicy:
        """The policy of ``settings`` (default: this process's ``MEDSERVE_*`` environment)."""
        settings = settings or Settings()
        folder = settings.upstream_secrets_dir or settings.home / "secrets"
        return cls.of(settings.upstream_credentials, folder)

    def variable_allowed(self, name: str) -> bool:
        return name.startswith(KEY_ENV_PREFIX) or name in self.variables

    def file_allowed(self, path: str) -> Path | None:
        """The resolved file if it lies under the secrets folder, else None."""
        resolved = Path(os.path.realpath(path))
        return resolved if resolved.is_relative_to(self.secrets_dir) else None

    def problem(self, route: UpstreamRoute) -> tuple[str, str] | None:
        """(field, the rule it breaks) when ``route`` names a credential outside the policy.
        The rule names the setting to change, never a value read."""
        if route.api_key_env and not self.variable_allowed(route.api_key_env):
            return (
                "api_key_env",
                f"environment variable {route.api_key_env} is not an allowed upstream "
                f"credential: name it {KEY_ENV_PREFIX}..., or list it in the server's "
                "MEDSERVE_UPSTREAM_CREDENTIALS",
            )
        if route.api_key_file and self.file_allowed(route.api_key_file) is None:
            return (
                "api_key_file",
                f"{route.api_key_file} is not under the server's upstream secrets folder "
                f"{self.secrets_dir} (MEDSERVE_UPSTREAM_SECRETS_DIR, default "
                "MEDSERVE_HOME/secrets)",
            )
        return None

    def check_registration(self, route: UpstreamRoute) -> None:
        """A 400 naming the field and the rule when ``route``'s credential is not allowed."""
        problem = self.problem(route)
        if problem is not None:
            where, rule = problem
            raise InvalidRequestError(
                f"upstream route: {where}: {rule}",
                details=[{"field": where, "rule": "credential_not_allowed"}],
            )


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def _never_an_upstream(host: str) -> bool:
    """Addresses no model server lives at, and where a route could only be a probe: link-local
    (the cloud metadata services, 169.254.169.254 and fe80::/10), unspecified, multicast."""
    address = _address(host)
    return address is not None and (
        address.is_link_local or address.is_unspecified or address.is_multicast
    )


class UpstreamRoute(BaseModel):
    """What a route says. Plain ``http://`` is refused for anything but a loopback host unless
    ``allow_insecure_http`` says the operator means it (the redacted prompt would cross the
    network in clear)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="The upstream's OpenAI base URL, e.g. https://llm.example.org/v1 "
        "(calls go to {base_url}/chat/completions and {base_url}/completions)."
    )
    upstream_model: str = Field(min_length=1, max_length=300)
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the upstream's API key (read per call).",
    )
    api_key_file: str | None = Field(
        default=None,
        description="File holding the upstream's API key (read per call, so it can rotate).",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait for the upstream's next byte."
    )
    total_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Longest a whole call may take, retries and the whole answer included "
        "(checked at each piece the upstream sends, and before each retry).",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a call that failed before any answer came (connection refused, "
        "429 or 5xx); never once the answer started.",
    )
    backoff_s: float = Field(default=0.5, ge=0, le=60, description="First retry's wait.")
    backoff_max_s: float = Field(default=8.0, ge=0, le=600)
    breaker_failures: int = Field(
        default=5, ge=1, le=1000, description="Consecutive failures that open the breaker."
    )
    breaker_reset_s: float = Field(
        default=30.0, gt=0, le=3600, description="How long an open breaker refuses calls."
    )
    context_length: int = Field(default=8192, ge=16, le=10_000_000)
    chars_per_token: float = Field(
        default=3.0,
        gt=0,
        le=16,
        description="No tokenizer of the upstream is at hand: prompts are estimated at this many "
        "characters per token for admission (budgets settle on the upstream's own usage).",
    )
    grammar: Literal["none", "gbnf"] = Field(
        default="none",
        description="'gbnf': the upstream takes llama.cpp's `grammar` field (llama.cpp servers, "
        "medserve's own gguf flavor), so response_format and grounded answers work through it.",
    )
    allow_insecure_http: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry a credential: use api_key_env or api_key_file")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        if _never_an_upstream(parts.hostname):
            raise ValueError(
                "must not be a link-local, unspecified or multicast address (e.g. a cloud "
                "metadata service)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _checks(self) -> UpstreamRoute:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        if self.api_key_file and not Path(self.api_key_file).is_absolute():
            raise ValueError("api_key_file must be an absolute path (read on the server)")
        parts = urlsplit(self.base_url)
        insecure = parts.scheme == "http" and not _loopback(parts.hostname or "")
        if insecure and not self.allow_insecure_http:
            raise ValueError(
                "plain http to a host that is not loopback would send prompts in clear: "
                "use https, or set allow_insecure_http"
            )
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be at least backoff_s")
        return self

    @property
    def host(self) -> str:
        """The upstream's host and port (what the card and ``models show`` name)."""
        return urlsplit(self.base_url).netloc

    def credential_reference(self) -> str:
        if self.api_key_env:
            return f"environment variable {self.api_key_env}"
        if self.api_key_file:
            return f"secret file {self.api_key_file}"
        return "none"

    def api_key(self, policy: CredentialPolicy) -> str | None:
        """The secret, read now from where the route points (never stored), if ``policy``
        allows it there (else a 503 naming the rule; nothing is read). Its absence is the
        server's configuration problem: an ``UpstreamError`` (502) naming where it looked."""
        problem = policy.problem(self)
        if problem is not None:
            raise UpstreamCredentialNotAllowedError(
                f"the route's credential is not allowed on this server ({problem[0]}: "
                f"{problem[1]}): nothing was sent"
            )
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "").strip()
            if not value:
                raise UpstreamError(
                    f"the route's credential is missing: environment variable "
                    f"{self.api_key_env} is not set on the server"
                )
            return _token(value, f"environment variable {self.api_key_env}")
        if self.api_key_file:
            path = policy.file_allowed(self.api_key_file) or Path(self.api_key_file)
            if path.exists() and not path.is_file():  # a FIFO, a device (/dev/zero), a folder
                raise UpstreamError(
                    f"the route's credential file {self.api_key_file} is not a regular file"
                )
            try:
                with path.open("rb") as handle:  # bounded: a key is short
                    raw = handle.read(MAX_KEY_BYTES + 1)
            except OSError as exc:
                raise UpstreamError(
                    f"the route's credential cannot be read from the file {self.api_key_file} "
                    f"({type(exc).__name__})"
                ) from exc
            value = raw.decode("utf-8", "replace").strip()
            if not value:
                raise UpstreamError(f"the route's credential file {self.api_key_file} is empty")
            return _token(value, f"the file {self.api_key_file}")
        return None


def _token(value: str, where: str) -> str:
    """``value`` if it can be a bearer token: one line of visible ASCII, at most
    ``MAX_KEY_BYTES``. Anything else is refused without being sent (or shown): a file that is
    not a key (a certificate, a config file) must not leave the box as a header."""
    if len(value) > MAX_KEY_BYTES or not all(33 <= ord(c) < 127 for c in value):
        raise UpstreamError(
            f"the route's credential in {where} is not an API key (one line of visible ASCII, "
            f"at most {MAX_KEY_BYTES} bytes): nothing was sent"
        )
    return value


def parse_route(data: bytes | str | dict[str, object]) -> UpstreamRoute:
    """A route, or a 400 naming the first field that is wrong."""
    try:
        if isinstance(data, dict):
            return UpstreamRoute.model_validate(data)
        return UpstreamRoute.model_validate_json(data)
    except ValidationError as exc:
        raise invalid_request(exc, where_empty="route", prefix="upstream route: ") from exc


def register_upstream(
    registry: Registry,
    name: str,
    route: UpstreamRoute,
    *,
    alias: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    serving_config: dict[str, Any] | None = None,
    created_by: str | None = None,
    policy: CredentialPolicy | None = None,
) -> ModelVersion:
    """Register ``route`` as a new version of ``name``: the route's canonical JSON is the
    artifact (so the same route registered twice is the same sha256). ``alias`` is set as
    ``Registry.add_version`` sets it: callers route ``production`` through the gate themselves.
    A credential outside ``policy`` (default: this process's settings) is refused first (400)."""
    (policy or CredentialPolicy.from_settings()).check_registration(route)
    document = json.dumps(route.model_dump(mode="json"), sort_keys=True, indent=1).encode()
    sha = registry.artifacts.put_bytes(document)
    signature = Signature(
        inputs=[
            FeatureSpec(
                name="messages",
                type="string",
                description="chat messages or a prompt: POST /openai/v1/chat/completions "
                "(checked for PHI, and redacted, before anything is sent upstream)",
            )
        ],
        outputs=[OutputSpec(name="text", datatype="BYTES", shape=[-1])],
    )
    return registry.add_version(
        name,
        alias=alias,
        actor=created_by or current_user(),
        description=description,
        artifact_sha256=sha,
        artifact_filename=ROUTE_FILENAME,
        flavor=FLAVOR,
        runtime=FLAVOR,
        runtime_reason=(
            f"routed to {route.upstream_model!r} at {route.host} (OpenAI-compatible upstream; "
            f"credential: {route.credential_reference()}; timeout {route.timeout_s:g} s, "
            f"{route.retries} retries, breaker after {route.breaker_failures} failures); "
            "called through /openai/v1"
        ),
        source_flavor=FLAVOR,
        source_artifact_sha256=None,
        library_versions={},
        signature=signature.model_dump(mode="json"),
        tags={
            "modality": "generative",
            "architecture": "upstream",
            "upstream": route.host,
            "upstream_model": route.upstream_model,
            "context_length": str(route.context_length),
            **(tags or {}),
        },
        serving_config={
            **(serving_config or {}),
            "upstream": {
                "base_url": route.base_url,
                "upstream_model": route.upstream_model,
                "credential": route.credential_reference(),
            },
        },
    )


async def held_stream(generation: Generation) -> AsyncIterator[bytes]:
    """A stream whose response head waits for the first event after the role chunk: the
    first released text, the end, or an error. An error there (the upstream refused, timed out,
    or its breaker is open) is raised, so the route answers it with its own status (502, 504,
    503) rather than a 200 carrying an error event. Used for remote runtimes only: a local
    model's stream starts at once, as before."""
    events = generation.start_stream()
    held: list[bytes] = []
    try:
        for _ in range(2):
            held.append(await anext(events))
    except StopAsyncIteration:
        pass
    except BaseException:
        await _close(events)
        raise
    if generation.failure is not None:
        await _close(events)  # its "finished" entry (outcome error) is journaled here
        raise generation.failure

    async def rest() -> AsyncIterator[bytes]:
        try:
            for event in held:
                yield event
            async for event in events:
                yield event
        finally:
            await _close(events)

    return rest()


async def _close(events: AsyncIterator[bytes]) -> None:
    close = getattr(events, "aclose", None)  # an async generator's: runs its ``finally``
    if close is not None:
        await close()
