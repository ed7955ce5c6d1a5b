"""Warnings and library log records raised while a request's payload is parsed are held, never
printed: parsers quote the offending value (pydicom: ``Invalid value for VR UI: '<the UID>'``),
and the value comes from a header that has not been de-identified yet. What is logged is at most
how many there were and of which categories.

Python warnings are caught with ``warnings.catch_warnings`` (process-wide state, so parses are
serialised by a lock); the parsers' loggers (``pydicom``, ``PIL``) get a filter that drops the
records of a thread while it parses.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from medserve.core.errors import ComputationFailedError, MedserveError

log = logging.getLogger(__name__)

PARSER_LOGGERS = ("pydicom", "PIL")

_state = threading.local()
_lock = threading.RLock()  # re-entrant: a parser may call another inside


class _HoldRecords(logging.Filter):
    """Drops (and counts) the records of a thread inside ``held_warnings``."""

    def filter(self, record: logging.LogRecord) -> bool:
        held: Counter[str] | None = getattr(_state, "held", None)
        if held is None:
            return True
        held[f"log:{record.levelname}"] += 1
        return False


_FILTER = _HoldRecords()
for _name in PARSER_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextmanager
def held_warnings(what: str) -> Iterator[Counter[str]]:
    """Hold the warnings and parser log records raised inside; then log their count and
    categories (never their text). Yields the running tally (category -> count)."""
    held: Counter[str] = Counter()
    outer = getattr(_state, "held", None)
    _state.held = held
    try:
        with _lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield held
            finally:
                held.update(f"warning:{w.category.__name__}" for w in caught)
    finally:
        _state.held = outer
        if held:
            log.info(
                "%s parsing raised %d warnings/log records (%s); held, values not shown",
                what,
                sum(held.values()),
                ", ".join(sorted(held)),
            )


@contextmanager
def errors_without_input(what: str) -> Iterator[None]:
    """A tokenizer's, decoder's or session's own error may quote its input (the note): inside,
    anything but a ``MedserveError`` becomes one that names only the error's type, logged by
    type only, and not chained to the original (a traceback would print its message)."""
    try:
        yield
    except MedserveError:
        raise
    except Exception as exc:
        kind = type(exc).__name__
        log.warning("%s failed: %s", what, kind)
        raise ComputationFailedError(f"{what} failed ({kind}); the input is not shown") from None
