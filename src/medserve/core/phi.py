"""PHI de-identification by the HIPAA Safe Harbor method (45 CFR §164.514(b)(2)).

Two tools, used on everything medserve keeps about a request (prediction log, audit trail,
error texts, application logs):

- :func:`pseudonymize` turns an identifier into a salted HMAC-SHA256 token. The same patient gives
  the same token under one home's salt (so outcomes can be joined to predictions), but the token
  cannot be reversed or recomputed without the salt, which never leaves the home.
- :func:`deidentify_text` and :func:`deidentify_record` remove or generalise the Safe Harbor
  identifier categories: names, geography below state (ZIP kept to its first three digits, ``000``
  for the sparsely populated prefixes), every date element but the year (ages over 89 grouped as
  ``90+``), phone and fax numbers, e-mail, SSN, medical record / health plan / account / certificate
  / licence numbers, vehicle and device identifiers, URLs, IP addresses and long numeric ids.

Free text goes through two layers (:func:`find_identifiers`): regular expressions for shapes and
labels, then Presidio's analyzer with context rules and gazetteers for names, places and employers
(loaded on the first text that needs it). Recall is measured on synthetic notes whose names and
places no gazetteer holds; the figures and what is still missed are in docs/deid.md. If the
analyzer fails, the text is withheld (fail closed).

Structured records are stronger: fields flagged ``identifier`` in the model's signature, and fields
whose names say what they hold (``ssn``, ``mrn``, ``email``, ``zip`` ...), are handled by field,
not by pattern.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medserve.core.deid import patterns as _patterns
from medserve.core.deid.patterns import RESTRICTED_ZIP3, Redaction, zip3

if TYPE_CHECKING:
    from medserve.core.registry.signature import Signature

__all__ = [
    "PSEUDONYM_PREFIX",
    "RESTRICTED_ZIP3",
    "WITHHELD",
    "Redaction",
    "deidentify_path",
    "deidentify_record",
    "deidentify_text",
    "deidentify_value",
    "find_identifiers",
    "load_or_create_salt",
    "pseudonymize",
    "zip3",
]

PSEUDONYM_PREFIX = "pid_"
_PSEUDONYM_HEX = 24  # 96 bits: collisions are negligible for any hospital's patient count
_SALT_BYTES = 32
SALT_FILE = Path("keys") / "phi_salt"

# Three-digit ZIP prefixes whose areas held 20,000 people or fewer (2000 Census, as listed by
# HHS guidance on Safe Harbor): these must be reported as 000.
_AGE_CAP = 90


# --------------------------------------------------------------------------------------------
# Pseudonyms and the salt
# --------------------------------------------------------------------------------------------


def pseudonymize(value: str, *, salt: bytes) -> str:
    """A stable, irreversible token for an identifier: ``pid_`` + truncated HMAC-SHA256 hex.

    Surrounding whitespace and letter case are ignored so ``" mrn123"`` and ``"MRN123"`` link.
    """
    if not salt:
        raise ValueError("pseudonymize needs a non-empty salt")
    normalized = str(value).strip().casefold().encode("utf-8")
    digest = hmac.new(salt, normalized, hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:_PSEUDONYM_HEX]


def load_or_create_salt(home: Path) -> bytes:
    """The home's PHI salt (32 random bytes in ``home/keys/phi_salt``, mode 0600).

    Created atomically (``O_EXCL``) so concurrent worker processes starting together agree on
    one salt; a loser of the race reads the winner's file.
    """
    path = Path(home) / SALT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        salt = secrets.token_bytes(_SALT_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, salt)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"PHI salt file {path} is truncated; restore it from backup")
    return data


# --------------------------------------------------------------------------------------------
# Free text
# --------------------------------------------------------------------------------------------


def _year_only(year: int) -> str:
    return "[DATE]" if year < _dt.date.today().year - 89 else str(year)


# Free text that the de-identifier could not process is not kept at all (fail closed).
WITHHELD = "[TEXT WITHHELD]"
_log = logging.getLogger(__name__)


def _needs_analyzer(text: str) -> bool:
    """Names and places need words around them: a string without a space and a capital letter
    (a path, a code, a category) is fully served by the patterns."""
    return any(c.isspace() for c in text) and any(c.isupper() for c in text)


def find_identifiers(text: str) -> list[Redaction]:
    """Where the identifiers of ``text`` are and what replaces each (non-overlapping, in order).

    Two layers: shapes and labels by regular expression (:mod:`medserve.core.deid.patterns`), then,
    for text with words, Presidio's analyzer with context rules and gazetteers
    (:mod:`medserve.core.deid.analyzer`, loaded on first use). Raises if the analyzer fails:
    callers that store text use :func:`deidentify_text`, which then withholds the text.
    """
    text = str(text)
    found = _patterns.find(text)
    if not _needs_analyzer(text):
        return found
    # Heavy (spaCy, Presidio, gazetteers): loaded once, only by processes that see free text.
    from medserve.core.deid import analyzer  # noqa: PLC0415  (lazy: ~100 MB, see docs/deid.md)

    return _patterns.merge(text, found + analyzer.find(text, found))


def deidentify_text(text: str) -> str:
    """Free text with the Safe Harbor identifiers removed or generalised (see module doc).

    Fails closed: if the analyzer cannot run (not installed, or an error in it), nothing of the
    text is returned but :data:`WITHHELD`.
    """
    text = str(text)
    try:
        redactions = find_identifiers(text)
    except Exception:
        _log.exception("free-text de-identification failed; the text is withheld")
        return WITHHELD
    return _patterns.apply(text, redactions)


def deidentify_path(path: str) -> str:
    """A request path (or any short string) de-identified by the patterns alone.

    Cheap (no analyzer is loaded): for audit details written on every refused request. A path
    carries ids, e-mails and numbers, rarely a free-text name.
    """
    text = str(path)
    return _patterns.apply(text, _patterns.find(text))


# --------------------------------------------------------------------------------------------
# Structured records
# --------------------------------------------------------------------------------------------

_IDENTIFIER_KEYS = frozenset(
    {
        "name",
        "first_name",
        "firstname",
        "last_name",
        "lastname",
        "middle_name",
        "full_name",
        "given_name",
        "family_name",
        "surname",
        "patient_name",
        "ssn",
        "social_security_number",
        "mrn",
        "medical_record_number",
        "patient_id",
        "patientid",
        "email",
        "email_address",
        "phone",
        "phone_number",
        "telephone",
        "mobile",
        "fax",
        "fax_number",
        "address",
        "street",
        "street_address",
        "address_line1",
        "address_line2",
        "city",
        "town",
        "county",
        "ip",
        "ip_address",
        "url",
        "website",
        "account_number",
        "account",
        "member_id",
        "policy_number",
        "health_plan_id",
        "insurance_id",
        "license_number",
        "licence_number",
        "certificate_number",
        "vin",
        "license_plate",
        "device_id",
        "serial_number",
        "udi",
    }
)
_ZIP_KEYS = frozenset({"zip", "zip_code", "zipcode", "postal_code", "postcode"})
_AGE_KEYS = frozenset({"age", "age_years", "patient_age", "age_at_visit", "age_at_admission"})


def _normalize_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_")


def deidentify_value(key: str, value: Any, *, salt: bytes, identifier: bool = False) -> Any:
    """One field's Safe Harbor form; ``identifier`` forces a pseudonym (signature flag)."""
    norm = _normalize_key(key)
    if value is None or isinstance(value, bool):
        return value
    if identifier or norm in _IDENTIFIER_KEYS:
        if isinstance(value, float) and value != value:  # NaN: nothing to hide
            return value
        return pseudonymize(str(value), salt=salt)
    if norm in _ZIP_KEYS:
        return zip3(str(value))
    if isinstance(value, _dt.datetime | _dt.date):
        return _year_only(value.year)
    if norm in _AGE_KEYS and isinstance(value, int | float) and value >= _AGE_CAP:
        return _AGE_CAP
    if isinstance(value, str):
        return deidentify_text(value)
    if isinstance(value, Mapping):
        return deidentify_record(dict(value), salt=salt)
    if isinstance(value, list | tuple):
        return [deidentify_value(key, v, salt=salt) for v in value]
    return value


def deidentify_record(
    record: dict[str, Any], signature: Signature | None = None, *, salt: bytes
) -> dict[str, Any]:
    """A copy of ``record`` safe to keep: identifier fields pseudonymized, the rest Safe Harbor.

    Identifier fields are those flagged in ``signature`` plus well-known identifier names
    (``ssn``, ``mrn``, ``email``...). ZIP fields keep three digits, dates keep the year, ages over
    89 become 90, and every other string goes through :func:`deidentify_text`. Numbers that are
    model features are kept as they are: they are what drift monitoring needs.
    """
    flagged = set(signature.identifier_fields) if signature is not None else set()
    return {
        str(k): deidentify_value(str(k), v, salt=salt, identifier=str(k) in flagged)
        for k, v in record.items()
    }
