"""Identifier shapes found by regular expressions alone (standard library, no model, no lists).

Why a separate layer: it is cheap (well under a millisecond for a note) and needs nothing loaded,
so it serves short strings such as request paths on its own, and it is the first layer for free
text, where :mod:`medserve.core.deid.analyzer` adds what needs context or gazetteers.

Every rule yields spans in the original text (``Redaction``): what to remove and what to put in
its place. A labelled value (``MRN: 123``) is a span on the value only, so the label stays for the
reader. Dates keep their year and ZIP codes their first three digits (Safe Harbor allows both).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["RESTRICTED_ZIP3", "Redaction", "find", "merge", "replacement", "zip3"]


@dataclass(frozen=True, slots=True)
class Redaction:
    """Characters ``[start, end)`` of the original text, to be replaced by ``replacement``."""

    start: int
    end: int
    label: str
    replacement: str


# Three-digit ZIP prefixes whose areas held 20,000 people or fewer (2000 Census, as listed by
# HHS guidance on Safe Harbor): these must be reported as 000.
RESTRICTED_ZIP3 = frozenset(
    {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
     "879", "884", "890", "893"}
)  # fmt: skip
_AGE_CAP = 90


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


def _expand_year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        this_century = _dt.date.today().year % 100
        year += 2000 if year <= this_century else 1900
    return year


_YEAR_IN = re.compile(r"(?<!\d)(\d{4}|'?\d{2})(?!\d)\W*$")


def replacement(label: str, text: str) -> str:
    """What a span of ``label`` becomes: a bracketed token, or the part Safe Harbor keeps."""
    if label == "DATE":
        iso = re.match(r"(\d{4})-\d", text)
        if iso:
            year = int(iso.group(1))
            return "[DATE]" if year < _oldest_reportable_year() else str(year)
        match = _YEAR_IN.search(text)
        # A trailing four-digit year, or a two-digit one after a separator (09-FEB-23, 1/2/21).
        if match and (len(match.group(1)) == 4 or re.search(r"[/.\-']\d{2}\W*$", text)):
            year = _expand_year(match.group(1).lstrip("'"))
            if 1900 <= year <= _dt.date.today().year + 20:
                return "[DATE]" if year < _oldest_reportable_year() else str(year)
        return "[DATE]"
    if label == "ZIP":
        return zip3(text)
    if label == "AGE":
        return f"{_AGE_CAP}+"
    return f"[{label}]"


# -- the rules ----------------------------------------------------------------------------------

_Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]

_MONTH_NAMES = (
    "Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    "|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
)
# Title case or upper case only: "may" and "march" in running text are verbs.
_MONTH = rf"(?:{_MONTH_NAMES}|{_MONTH_NAMES.upper()})\.?"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_NUM_MONTH = r"(?:1[0-2]|0?[1-9])"
_NUM_DAY = r"(?:[12]\d|3[01]|0?[1-9])"
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ"
    "|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR"
)
STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia"
    "|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts"
    "|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey"
    "|New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania"
    "|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington"
    "|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)
STATE = rf"(?:{_STATES})"
_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl"
    r"|Terrace|Ter|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq|Path|Trail|Trl|Pike|Row|Loop"
    r"|Alley|Crossing|Xing|Run|Turnpike|Tpke)"
)
NAME_WORD = r"[A-Z][a-z]+(?:['\-][A-Z]?[a-z]+)*"
_NAME_WORD_CAPS = r"[A-Z][A-Za-z'\-]+"
# An identifier value after a label: letters/digits/-./ with at least one digit.
_ID_VALUE = r"(?=[A-Za-z0-9./-]*\d)[A-Za-z0-9](?:[A-Za-z0-9./-]*[A-Za-z0-9])?"
_LABEL_SEP = r"\s*(?:[:#=]|\bis\b)?\s*"


def _labelled(label: str, token: str, value: str = _ID_VALUE) -> _Rule:
    suffix = r"(?:\s*(?:number|num\b|no\b|id\b|#))?"
    return token, re.compile(rf"(?i:\b(?:{label}){suffix})\.?{_LABEL_SEP}(?P<v>{value})"), None


def _valid_ip(m: re.Match[str]) -> bool:
    text = m.group("v")
    if ":" in text and text.count(":") < 3 and "::" not in text:
        return False  # a clock time such as 10:30:00, not an address
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_numeric_date(m: re.Match[str]) -> bool:
    a, b = int(m.group("a")), int(m.group("b"))
    return (a <= 12 and b <= 31) or (b <= 12 and a <= 31)


def _vin(m: re.Match[str]) -> bool:
    text = m.group("v")
    return any(c.isdigit() for c in text) and any(c.isalpha() for c in text)


def _old_age(m: re.Match[str]) -> bool:
    return int(m.group("v")) >= _AGE_CAP


def _is_fax(m: re.Match[str]) -> bool:
    return "fax" in m.string[max(0, m.start() - 16) : m.start()].lower()


_SSN_VALUE = r"\d{3}[ \-]?\d{2}[ \-]?\d{4}(?!\d)"
_PHONE = (
    r"(?<![\w+])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}\b"
    r"(?:,?\s*(?:x|ext\.?|extension)\s*\d{1,5})?"
)

RULES: list[_Rule] = [
    ("EMAIL", re.compile(r"\b(?P<v>[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})\b"), None),
    (
        "URL",
        re.compile(
            r"(?P<v>(?i:\b(?:https?|ftp|sftp)://|\bwww\.)[^\s<>\"'\]\)]+?)(?=[.,;:!?]*(?:\s|$))"
        ),
        None,
    ),
    (
        "IP",
        re.compile(r"(?<![\w:.])(?P<v>(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w:])"),
        _valid_ip,
    ),
    # An IPv4 address may end a sentence: a full stop after it is not part of it.
    ("IP", re.compile(r"(?<![\w.])(?P<v>(?:\d{1,3}\.){3}\d{1,3})(?!\w|\.\d)"), _valid_ip),
    ("SSN", re.compile(r"\b(?P<v>\d{3}-\d{2}-\d{4})\b"), None),
    _labelled(
        r"SSN|SS\s*#|SS\s*No|social\s+security(?:\s+(?:number|no|#))?",
        "SSN",
        rf"{_SSN_VALUE}|{_ID_VALUE}",
    ),
    _labelled(
        r"MRN|MR\s*#|MR\s*No|Med\.?\s*Rec\.?(?:\s*(?:number|no|#))?"
        r"|medical\s+record(?:\s+(?:number|no|#|id))?",
        "MRN",
    ),
    _labelled(
        r"health\s*plan(?:\s+(?:beneficiary\s+)?(?:number|no|id|#))?|member\s*(?:id|#|number|no)"
        r"|policy\s*(?:number|no|#|id)?|insurance\s*(?:id|#|number|no)"
        r"|medicaid(?:\s*(?:id|#|number|no))?|medicare(?:\s*(?:id|#|number|no))?"
        r"|subscriber\s*(?:id|#|number)|beneficiary\s*(?:id|#|number)|group\s*(?:id|#|number|no)",
        "HEALTH_PLAN_ID",
    ),
    _labelled(r"(?:billing\s+)?account|acct", "ACCOUNT"),
    _labelled(
        r"licen[cs]e\s+plate|plate(?:\s+(?:number|no|#))?|VIN"
        r"|vehicle\s*(?:id|identifier|number|no|serial)",
        "VEHICLE_ID",
    ),
    _labelled(
        r"serial(?:\s*(?:number|no|#))?|S/N|SN|device\s*(?:id|identifier|serial|number)|UDI|IMEI",
        "DEVICE_ID",
    ),
    _labelled(
        r"(?:driver'?s\s+)?licen[cs]e(?:\s+(?:number|no|#|id))?|certificate(?:\s+(?:number|no|#))?"
        r"|cert|DEA|NPI",
        "LICENSE",
    ),
    # Dates (the year is kept by ``replacement``).
    (
        "DATE",
        re.compile(
            r"\b(?P<v>\d{4}-(?:1[0-2]|0?[1-9])-(?:[12]\d|3[01]|0?[1-9])"
            r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?)\b"
        ),
        None,
    ),
    (
        "DATE",
        re.compile(r"\b(?P<v>(?P<a>\d{1,2})([/.\-])(?P<b>\d{1,2})\3(?:\d{4}|\d{2}))(?![\d/.\-]\d)"),
        _valid_numeric_date,
    ),
    ("DATE", re.compile(rf"\b(?P<v>{_DAY}[\-/ ]{_MONTH}[\-/ ,]\s?(?:\d{{4}}|'?\d{{2}}))\b"), None),
    ("DATE", re.compile(rf"\b(?P<v>{_MONTH}\s+{_DAY},?\s+\d{{4}})\b"), None),
    ("DATE", re.compile(rf"\b(?P<v>(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH},?\s+\d{{4}})\b"), None),
    ("DATE", re.compile(rf"\b(?P<v>{_MONTH},?\s+\d{{4}})\b"), None),
    ("DATE", re.compile(rf"\b(?P<v>{_MONTH}\s+{_DAY})\b(?!\s*(?:mg|mcg|ml|units?|%))"), None),
    ("DATE", re.compile(rf"\b(?P<v>(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH})(?![a-z])"), None),
    # Month and year (03/2020): the month is a date element.
    ("DATE", re.compile(r"(?<![\d/.])(?P<v>(?:1[0-2]|0[1-9])/(?:19|20)\d{2})\b(?!/)"), None),
    # Month/day without a year only where a word shortly before says it is a date (not a pain
    # score, a strength or half a tablet).
    (
        "DATE",
        re.compile(
            r"(?i:\b(?:on|since|from|until|till|through|by|dated|DOS|seen|admitted|discharged"
            r"|starting|started|stopped|before|after|last|next|due|of|recheck|ED|ER|clinic"
            r"|visit|surgery|procedure|CT|MRI|echo|labs?|drawn|collected|f/u|RTC|return)"
            r"(?:\s+[A-Za-z]+){0,2}\s+\(?)"
            rf"(?P<v>{_NUM_MONTH}/{_NUM_DAY})(?![\d/])"
        ),
        None,
    ),
    # Geography below state. City, ST ZIP (the comma is often left out).
    (
        "CITY",
        re.compile(
            rf"\b(?P<v>{NAME_WORD}(?:\s+{NAME_WORD}){{0,2}})(?:,\s*|\s+){STATE}\s+\d{{5}}\b"
        ),
        None,
    ),
    ("ZIP", re.compile(rf"\b{STATE},?\s+(?P<v>\d{{5}}(?:-\d{{4}})?)\b"), None),
    (
        "ZIP",
        re.compile(r"(?i:\b(?:zip|postal)(?:\s*code)?)\s*[:#]?\s*(?P<v>\d{5}(?:-\d{4})?)\b"),
        None,
    ),
    ("ZIP", re.compile(r"\b(?P<v>\d{5}-\d{4})\b"), None),
    (
        "ADDRESS",
        re.compile(
            rf"\b(?P<v>\d{{1,6}}\s+(?:{NAME_WORD}\s+){{1,4}}{_STREET_SUFFIX}\b\.?"
            r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+|\s+#\s*\d+[A-Za-z]?)?)"
        ),
        None,
    ),
    (
        "ADDRESS",
        re.compile(
            r"\b(?P<v>(?:Route|Rte\.?|Rt\.?|Highway|Hwy\.?|State\s+(?:Road|Route|Highway)"
            r"|County\s+(?:Road|Route|Highway)|Interstate|Farm\s+to\s+Market)\s*\d{1,4}[A-Z]?)\b"
            r"|\b(?P<w>(?:I|US|SR|CR)-\d{1,3}[A-Z]?)\b"
        ),
        None,
    ),
    ("ADDRESS", re.compile(r"(?P<v>(?i:\bP\.?\s?O\.?\s+Box)\s+\d+)"), None),
    ("ADDRESS", re.compile(rf"\b(?P<v>{NAME_WORD}(?:\s+{NAME_WORD})?\s+County)\b"), None),
    # Phone and fax numbers (NANP and international forms).
    ("FAX", re.compile(rf"(?P<v>{_PHONE})"), _is_fax),
    ("PHONE", re.compile(rf"(?P<v>{_PHONE})"), None),
    ("PHONE", re.compile(r"(?<![\w])(?P<v>\+\d{1,3}(?:[\s.\-]?\d{2,4}){2,5})\b"), None),
    # Names, where titles or labels mark them (the title goes with the name).
    (
        "NAME",
        re.compile(
            rf"\b(?P<v>(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof)\.?\s+{_NAME_WORD_CAPS}"
            rf"(?:\s+[A-Z]\.)?(?:\s+{NAME_WORD})?)\b"
        ),
        None,
    ),
    (
        "NAME",
        re.compile(
            r"(?i:\b(?:patient(?:'s)?\s+name|patient|pt|name|full\s+name|next\s+of\s+kin"
            r"|seen\s+by|signed\s+by|referred\s+by|attending|physician|nurse|contact|mother"
            r"|father|spouse|guardian|PCP|provider|dictated\s+by|emergency\s+contact))\s*:\s*"
            rf"(?P<v>{_NAME_WORD_CAPS},\s+{_NAME_WORD_CAPS}(?:\s+[A-Z]\.?)?"
            rf"|{_NAME_WORD_CAPS}(?:\s+[A-Z](?:\.|(?=\s)))?(?:\s+{_NAME_WORD_CAPS}){{0,2}})"
        ),
        None,
    ),
    # Ages over 89.
    (
        "AGE",
        re.compile(r"\b(?P<v>\d{2,3})(?:\s*|-)(?i:years?|yrs?|y/?o|y\.o\.)(?:[\s-]?(?i:old))?\b"),
        _old_age,
    ),
    ("AGE", re.compile(r"(?i:\b(?:age|aged))\s*[:=]?\s*(?P<v>\d{2,3})\b"), _old_age),
    # Bare vehicle identification numbers and any other long numeric identifier.
    ("VEHICLE_ID", re.compile(r"\b(?P<v>[A-HJ-NPR-Z0-9]{17})\b"), _vin),
    ("ID", re.compile(r"(?<![\d.])(?P<v>\d{7,})(?![\d.]*\d)"), None),
]


def _spans(text: str) -> Iterator[Redaction]:
    for label, pattern, check in RULES:
        for m in pattern.finditer(text):
            if check is not None and not check(m):
                continue
            group = "v" if m.group("v") is not None else "w"
            start, end = m.span(group)
            yield Redaction(start, end, label, "")


# Which label wins where spans overlap: specific before generic.
_PRIORITY = {
    label: i
    for i, label in enumerate(
        ["EMAIL", "URL", "IP", "SSN", "MRN", "HEALTH_PLAN_ID", "ACCOUNT", "VEHICLE_ID",
         "DEVICE_ID", "LICENSE", "FAX", "PHONE", "DATE", "ZIP", "ADDRESS", "CITY", "NAME",
         "EMPLOYER", "AGE", "ID"]
    )
}  # fmt: skip


def merge(text: str, spans: list[Redaction]) -> list[Redaction]:
    """Non-overlapping spans in text order, each with its replacement.

    Overlapping spans become one, labelled by the most specific of them; names separated only by
    one space become one ``[NAME]``.
    """
    ordered = sorted(spans, key=lambda s: (s.start, -s.end))
    groups: list[tuple[int, int, str]] = []
    for s in ordered:
        if groups:
            g_start, g_end, g_label = groups[-1]
            joinable = s.label == g_label == "NAME" and text[g_end : s.start] == " "
            if s.start < g_end or joinable:
                label = g_label
                if (
                    _PRIORITY.get(s.label, 99) < _PRIORITY.get(g_label, 99)
                    and s.end - s.start >= (g_end - g_start) // 2
                ):
                    label = s.label
                groups[-1] = (g_start, max(g_end, s.end), label)
                continue
        groups.append((s.start, s.end, s.label))
    return [Redaction(a, b, lab, replacement(lab, text[a:b])) for a, b, lab in groups]


def find(text: str) -> list[Redaction]:
    """The regular-expression layer's redactions, merged."""
    return merge(text, list(_spans(text)))


def apply(text: str, redactions: list[Redaction]) -> str:
    """``text`` with each (non-overlapping, ordered) redaction replaced."""
    out: list[str] = []
    pos = 0
    for r in redactions:
        out.append(text[pos : r.start])
        out.append(r.replacement)
        pos = r.end
    out.append(text[pos:])
    return "".join(out)
