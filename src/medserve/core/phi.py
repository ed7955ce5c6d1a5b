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

Free-text detection is pattern based: it is conservative (it prefers over-redaction), and it finds
names only where the text marks them (a title such as ``Mr.``/``Dr.`` or a label such as
``Patient:``). Structured records are stronger: fields flagged ``identifier`` in the model's
signature, and fields whose names say what they hold (``ssn``, ``mrn``, ``email``, ``zip`` ...),
are handled by field, not by pattern.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medserve.core.registry.signature import Signature

__all__ = [
    "PSEUDONYM_PREFIX",
    "RESTRICTED_ZIP3",
    "deidentify_record",
    "deidentify_text",
    "deidentify_value",
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
RESTRICTED_ZIP3 = frozenset(
    {
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    }
)

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


def zip3(value: str) -> str:
    """The Safe Harbor form of a ZIP code: its first three digits, or ``000`` for small areas."""
    digits = re.sub(r"\D", "", str(value))
    if len(digits) < 3:
        return "000"
    prefix = digits[:3]
    return "000" if prefix in RESTRICTED_ZIP3 else prefix


def _oldest_reportable_year() -> int:
    # A year of birth more than 89 years ago reveals an age over 89: it is aggregated too.
    return _dt.date.today().year - 89


def _year_only(year: int) -> str:
    return "[DATE]" if year < _oldest_reportable_year() else str(year)


def _expand_year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        this_century = _dt.date.today().year % 100
        year += 2000 if year <= this_century else 1900
    return year


_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ"
    "|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR"
)
_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl"
    r"|Terrace|Ter|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq)"
)
# An identifier value after a label: letters/digits/-./ with at least one digit.
_ID_VALUE = r"(?=[A-Za-z0-9./-]*\d)[A-Za-z0-9](?:[A-Za-z0-9./-]*[A-Za-z0-9])?"
_LABEL_SEP = r"\s*(?:[:#=]|\bis\b)?\s*"

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _const(token: str) -> Callable[[re.Match[str]], str]:
    return lambda _m: token


def _labelled(label: str, token: str) -> _Rule:
    """Replace the value after a label (``MRN: 123``) but keep the label for readability."""
    suffix = r"(?:\s*(?:number|num\b|no\b|id\b|#))?"
    pattern = re.compile(rf"(?i:\b(?:{label}){suffix})\.?{_LABEL_SEP}({_ID_VALUE})")

    def repl(m: re.Match[str]) -> str:
        start, end = m.span(1)
        whole = m.group(0)
        offset = m.start(0)
        return whole[: start - offset] + token + whole[end - offset :]

    return pattern, repl


def _ip(m: re.Match[str]) -> str:
    text = m.group(0)
    if text.count(":") < 3 and "::" not in text:
        return text  # a clock time such as 10:30:00, not an address
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text
    return "[IP]"


def _ipv4(m: re.Match[str]) -> str:
    try:
        ipaddress.IPv4Address(m.group(0))
    except ValueError:
        return m.group(0)
    return "[IP]"


def _iso_date(m: re.Match[str]) -> str:
    return _year_only(int(m.group(1)))


def _numeric_date(m: re.Match[str]) -> str:
    return _year_only(_expand_year(m.group(3)))


def _last_group_year(m: re.Match[str]) -> str:
    return _year_only(int(m.group(m.lastindex or 0)))


def _phone(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 16) : m.start()].lower()
    return "[FAX]" if "fax" in before else "[PHONE]"


def _city_state_zip(m: re.Match[str]) -> str:
    return f"[CITY], {m.group(2)} {zip3(m.group(3))}"


def _labelled_zip(m: re.Match[str]) -> str:
    return m.group(1) + zip3(m.group(2))


def _zip_plus4(m: re.Match[str]) -> str:
    return zip3(m.group(1))


def _age(m: re.Match[str]) -> str:
    age = int(m.group("age"))
    if age < _AGE_CAP:
        return m.group(0)
    start, end = m.span("age")
    offset = m.start(0)
    whole = m.group(0)
    return whole[: start - offset] + "90+" + whole[end - offset :]


def _vin(m: re.Match[str]) -> str:
    text = m.group(0)
    has_digit = any(c.isdigit() for c in text)
    has_alpha = any(c.isalpha() for c in text)
    return "[VEHICLE_ID]" if has_digit and has_alpha else text


_NAME_WORD = r"[A-Z][a-zA-Z'\-]+"

# Order matters: specific, unambiguous forms first (a URL contains what looks like a path and
# digits; an e-mail contains a domain), generic numbers last.
_RULES: list[_Rule] = [
    (re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), _const("[EMAIL]")),
    (
        re.compile(r"(?i:\b(?:https?|ftp|sftp)://|\bwww\.)[^\s<>\"'\]\)]+"),
        _const("[URL]"),
    ),
    (re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), _ip),
    (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"), _ipv4),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), _const("[SSN]")),
    _labelled(r"SSN|social\s+security(?:\s+(?:number|no|#))?", "[SSN]"),
    _labelled(r"MRN|MR\s*#|MR\s*No|medical\s+record(?:\s+(?:number|no|#|id))?", "[MRN]"),
    _labelled(
        r"health\s*plan(?:\s+(?:beneficiary\s+)?(?:number|no|id|#))?|member\s*(?:id|#|number|no)"
        r"|policy\s*(?:number|no|#|id)|insurance\s*(?:id|#|number|no)"
        r"|medicaid(?:\s*(?:id|#|number|no))?|medicare(?:\s*(?:id|#|number|no))?"
        r"|subscriber\s*(?:id|#|number)|beneficiary\s*(?:id|#|number)",
        "[HEALTH_PLAN_ID]",
    ),
    _labelled(r"account|acct", "[ACCOUNT]"),
    _labelled(
        r"licen[cs]e\s+plate|plate(?:\s+(?:number|no|#))?|VIN"
        r"|vehicle\s*(?:id|identifier|number|no|serial)",
        "[VEHICLE_ID]",
    ),
    _labelled(
        r"serial(?:\s*(?:number|no|#))?|S/N|SN|device\s*(?:id|identifier|serial|number)|UDI|IMEI",
        "[DEVICE_ID]",
    ),
    _labelled(
        r"(?:driver'?s\s+)?licen[cs]e(?:\s+(?:number|no|#|id))?|certificate(?:\s+(?:number|no|#))?"
        r"|cert|DEA|NPI",
        "[LICENSE]",
    ),
    # Dates: keep the year, drop month and day (and times).
    (
        re.compile(
            r"\b(\d{4})-(\d{1,2})-(\d{1,2})"
            r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
        ),
        _iso_date,
    ),
    (re.compile(r"\b(\d{1,2})([/.\-])\d{1,2}\2(\d{4}|\d{2})\b"), _numeric_date),
    (
        re.compile(rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(\d{{4}})\b"),
        _last_group_year,
    ),
    (
        re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+(\d{{4}})\b"),
        _last_group_year,
    ),
    (re.compile(rf"\b{_MONTH}\.?,?\s+(\d{{4}})\b"), _last_group_year),
    (re.compile(rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b"), _const("[DATE]")),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b"), _const("[DATE]")),
    # Geography below state.
    (
        re.compile(
            rf"\b({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}}),\s+({_STATES})\s+(\d{{5}})(?:-\d{{4}})?\b"
        ),
        _city_state_zip,
    ),
    (
        re.compile(r"((?i:\b(?:zip|postal)(?:\s*code)?)\s*[:#]?\s*)(\d{5})(?:-\d{4})?\b"),
        _labelled_zip,
    ),
    (re.compile(r"\b(\d{5})-\d{4}\b"), _zip_plus4),
    (
        re.compile(
            rf"\b\d{{1,6}}\s+(?:{_NAME_WORD}\s+){{1,4}}{_STREET_SUFFIX}\b\.?"
            r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+)?"
        ),
        _const("[ADDRESS]"),
    ),
    (re.compile(r"(?i:\bP\.?\s?O\.?\s+Box)\s+\d+"), _const("[ADDRESS]")),
    # Phone and fax numbers (NANP and international forms).
    (
        re.compile(
            r"(?<![\w+])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}\b"
            r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?"
        ),
        _phone,
    ),
    (re.compile(r"(?<![\w])\+\d{1,3}(?:[\s.\-]?\d{2,4}){2,5}\b"), _phone),
    # Names, where the text marks them.
    (
        re.compile(
            rf"\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof)\.?\s+{_NAME_WORD}(?:\s+[A-Z]\.)?(?:\s+{_NAME_WORD})?\b"
        ),
        _const("[NAME]"),
    ),
    (
        re.compile(
            r"((?i:\b(?:patient(?:'s)?\s+name|patient|pt|name|full\s+name|next\s+of\s+kin"
            r"|seen\s+by|signed\s+by|referred\s+by|attending|physician|nurse|contact|mother"
            r"|father|spouse|guardian))\s*:\s*)"
            rf"{_NAME_WORD}(?:\s+[A-Z](?:\.|(?=\s)))?(?:\s+{_NAME_WORD}){{0,2}}"
        ),
        lambda m: m.group(1) + "[NAME]",
    ),
    # Ages over 89.
    (
        re.compile(r"\b(?P<age>\d{2,3})(?:\s*|-)(?i:years?|yrs?|y/?o|y\.o\.)(?:[\s-]?(?i:old))?\b"),
        _age,
    ),
    (re.compile(r"(?i:\b(?:age|aged))\s*[:=]?\s*(?P<age>\d{2,3})\b"), _age),
    # Bare vehicle identification numbers and any other long numeric identifier.
    (re.compile(r"\b[A-HJ-NPR-Z0-9]{17}\b"), _vin),
    (re.compile(r"(?<![\d.])\d{7,}(?![\d.]*\d)"), _const("[ID]")),
]


def deidentify_text(text: str) -> str:
    """Free text with the Safe Harbor identifiers removed or generalised (see module doc)."""
    out = str(text)
    for pattern, repl in _RULES:
        out = pattern.sub(repl, out)
    return out


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
