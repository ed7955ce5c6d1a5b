"""``medserve chat NAME``: talk to a generative model in process, streaming its answer.

It loads the version (production by default) the way ``medserve predict`` does (sha256 checked,
same runtime as the server), so nothing needs to be served. As for the API, what is typed passes
PHI detection first: a message with identifiers is refused (``--allow-phi`` lets the operator's
own terminal through; nothing of a chat is stored either way). ``--once PROMPT`` answers one
message and exits, for scripts and tests: the answer alone goes to stdout, token counts to
stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.loaded_model import load_version_locally
from medserve.faces.cli.support import err_console, split_ref
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.features.llm.protocol import GenerationParams, GenerativeRuntime

_EXIT_WORDS = frozenset({"/exit", "/quit", "exit", "quit"})


def _check_phi(text: str) -> None:
    """Refuse a message with identifiers, naming their kinds only (never the text)."""
    from medserve.core.phi import find_identifiers  # noqa: PLC0415 (heavy: the PHI analyzer)

    try:
        found = find_identifiers(text)
    except Exception as exc:  # a detector failure refuses, as the API does
        raise InvalidRequestError(
            f"PHI detection failed ({type(exc).__name__}): the message was not sent"
        ) from exc
    if found:
        kinds = ", ".join(sorted({r.label for r in found}))
        raise InvalidRequestError(
            f"the message holds identifiers ({kinds}): not sent to the model "
            "(de-identify it, or pass --allow-phi on your own machine)"
        )


def _answer(
    runtime: GenerativeRuntime, messages: list[dict[str, str]], params: GenerationParams
) -> str:
    """Stream one answer to stdout; returns its text."""
    parts: list[str] = []
    last = None
    for chunk in runtime.chat(messages, params):
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            parts.append(chunk.text)
        last = chunk
    sys.stdout.write("\n")
    sys.stdout.flush()
    if last is not None:
        err_console.print(
            f"[dim]{last.prompt_tokens} prompt + {last.completion_tokens} completion tokens; "
            f"finish: {last.finish_reason}[/]",
            highlight=False,
        )
    return "".join(parts)


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @app.command()
    def chat(
        ref: Annotated[
            str, typer.Argument(help="NAME[@VERSION|ALIAS]; NAME alone means production.")
        ],
        once: Annotated[
            str | None, typer.Option("--once", help="Answer this one message and exit.")
        ] = None,
        system: Annotated[str | None, typer.Option(help="A system message first.")] = None,
        max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
        temperature: Annotated[float, typer.Option(help="0 is greedy (deterministic).")] = 0.7,
        top_p: float = 1.0,
        seed: Annotated[int | None, typer.Option(help="Sampling seed (repeatable runs).")] = None,
        allow_phi: Annotated[
            bool, typer.Option(help="Send messages even where identifiers are detected.")
        ] = False,
    ) -> None:
        """Chat with a generative model in process, streaming (Ctrl-D or /exit to leave)."""
        try:
            name, version_ref = split_ref(ref)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                model = load_version_locally(registry, version)
            runtime = model.runtime
            if not isinstance(runtime, GenerativeRuntime):
                raise InvalidRequestError(
                    f"{name} v{version.version} is not a generative model "
                    f"(runtime {version.runtime}): use `medserve predict`"
                )
            params = GenerationParams(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                # one local user: each turn reuses the conversation so far from the KV cache
                cache_key="medserve chat",
            )
            messages: list[dict[str, str]] = (
                [{"role": "system", "content": system}] if system else []
            )
            if once is not None:
                if not allow_phi:
                    _check_phi(once)
                _answer(runtime, [*messages, {"role": "user", "content": once}], params)
                return
        except MedserveError as exc:
            raise _fail(exc) from exc
        err_console.print(
            f"[bold]{name}[/] v{version.version} ({version.runtime}); Ctrl-D or /exit to leave",
            highlight=False,
        )
        while True:
            try:
                text = input("you> ")
            except (EOFError, KeyboardInterrupt):
                sys.stdout.write("\n")
                return
            if text.strip() in _EXIT_WORDS:
                return
            if not text.strip():
                continue
            try:
                if not allow_phi:
                    _check_phi(text)
                messages.append({"role": "user", "content": text})
                reply = _answer(runtime, messages, params)
            except MedserveError as exc:
                if messages and messages[-1]["role"] == "user":
                    messages.pop()
                err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
                continue
            except KeyboardInterrupt:  # stop this answer, keep the conversation
                messages.pop()
                sys.stdout.write("\n")
                continue
            messages.append({"role": "assistant", "content": reply})
