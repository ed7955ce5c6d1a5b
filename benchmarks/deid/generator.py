# ruff: noqa: E501  (tables of templates and report lines read better unwrapped)
"""A frozen generator of synthetic clinical notes with every identifier's span known.

Why synthetic: real notes cannot leave a hospital, and a recall figure needs every identifier
marked. Why frozen: the figures in docs/deid.md are only comparable while the corpus is the
same, so the seeds, templates and lists here are not tuned to the detector (changing them means
re-measuring the baseline too). What it draws from is in :mod:`benchmarks.deid.lists`, disjoint
from the detector's gazetteers: names and towns must be found by context, as in real notes where
most surnames are in no list.

Two halves: ``dev`` (tuning may look at it) and ``heldout`` (never tuned on: the reported
figures). They use different seeds and different halves of every list.

Each identifier has a category (``name``, ``date``, ``location``, ``number``, ``contact``,
``employer``), a finer kind, and optionally a part that Safe Harbor lets us keep (the year of a
date, the first three digits of a ZIP code).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.deid import lists

__all__ = ["CATEGORIES", "HALVES", "Identifier", "Note", "generate"]

CATEGORIES = ("name", "date", "location", "number", "contact", "employer")
HALVES = {"dev": 20261206, "heldout": 79187711}
NOTES_PER_HALF = 200


@dataclass(frozen=True)
class Identifier:
    start: int
    end: int
    category: str
    kind: str
    text: str
    keep: tuple[int, int] | None = None  # absolute span that may survive (year, ZIP3)


@dataclass(frozen=True)
class Note:
    id: str
    kind: str  # "note" or "comment" (a short CDS override comment)
    text: str
    identifiers: tuple[Identifier, ...]


@dataclass
class _Writer:
    parts: list[str] = field(default_factory=list)
    ids: list[Identifier] = field(default_factory=list)
    length: int = 0

    def t(self, text: str) -> _Writer:
        self.parts.append(text)
        self.length += len(text)
        return self

    def phi(
        self, text: str, category: str, kind: str, keep: tuple[int, int] | None = None
    ) -> _Writer:
        start = self.length
        absolute = (start + keep[0], start + keep[1]) if keep else None
        self.ids.append(Identifier(start, start + len(text), category, kind, text, absolute))
        return self.t(text)

    def text(self) -> str:
        return "".join(self.parts)


class _Pools:
    """The half's share of each list, and the note's own cast (one patient, their relatives)."""

    def __init__(self, half: str, rng: random.Random) -> None:
        offset = 0 if half == "dev" else 1
        self.first = lists.FIRST_NAMES[offset::2]
        self.last = lists.LAST_NAMES[offset::2]
        self.towns = lists.TOWNS[offset::2]
        self.streets = lists.STREET_NAMES[offset::2]
        self.rng = rng

    def person(self) -> tuple[str, str]:
        return self.rng.choice(self.first), self.rng.choice(self.last)

    def town(self) -> str:
        return self.rng.choice(self.towns)

    def employer(self) -> str:
        rng = self.rng
        return f"{rng.choice(lists.EMPLOYER_HEADS)} {rng.choice(lists.EMPLOYER_TAILS)}"


_STATES = ("MA", "NH", "VT", "ME", "CT", "RI", "NY", "CO", "NM", "WA", "OR", "TX", "NC", "MI")
_STATE_NAMES = ("Massachusetts", "New Hampshire", "Vermont", "Maine", "Colorado", "Oregon")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


def _date(w: _Writer, rng: random.Random, *, with_year: bool | None = None) -> None:
    """A date in one of the shapes clinicians write; the year may stay (Safe Harbor)."""
    d = dt.date(2017, 1, 1) + dt.timedelta(days=rng.randrange(365 * 10))
    mon = _MONTHS[d.month - 1]
    full = [
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.month}/{d.day}/{d.year}",
        f"{d.month}/{d.day}/{d.year % 100:02d}",
        f"{d.year}-{d.month:02d}-{d.day:02d}",
        f"{d.day}-{mon[:3]}-{d.year}",
        f"{d.day:02d}-{mon[:3].upper()}-{d.year % 100:02d}",
        f"{mon} {d.day}, {d.year}",
        f"{mon[:3]} {d.day}, {d.year}",
        f"{mon[:3]}. {d.day} {d.year}",
        f"{d.day} {mon} {d.year}",
        f"{mon} {d.day}th, {d.year}" if d.day in (4, 5, 6, 7, 8, 9) else f"{mon} {d.day}, {d.year}",
        f"{d.month:02d}.{d.day:02d}.{d.year}",
    ]
    partial = [
        f"{mon} {d.day}",
        f"{mon[:3]} {d.day}",
        f"{d.month}/{d.day}",
        f"the {d.day}th of {mon}" if d.day in (4, 5, 6, 7, 8, 9) else f"{d.day} {mon}",
        f"{mon} {d.year}",
        f"{d.month:02d}/{d.year}",
    ]
    if with_year is None:
        with_year = rng.random() < 0.75
    text = rng.choice(full if with_year else partial)
    year = str(d.year)
    at = text.rfind(year)
    keep = (at, at + 4) if at >= 0 else None
    w.phi(text, "date", "date", keep)


def _name(w: _Writer, pools: _Pools, first: str, last: str, *, style: str | None = None) -> None:
    rng = pools.rng
    style = style or rng.choice(["full", "full", "full", "first", "last_first", "initial"])
    if style == "full":
        w.phi(f"{first} {last}", "name", "name")
    elif style == "first":
        w.phi(first, "name", "name")
    elif style == "last":
        w.phi(last, "name", "name")
    elif style == "last_first":
        w.phi(f"{last}, {first}", "name", "name")
    else:
        w.phi(f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}", "name", "name")


def _phone_text(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [
            f"({a}) {b}-{c:04d}",
            f"{a}-{b}-{c:04d}",
            f"{a}.{b}.{c:04d}",
            f"{a} {b} {c:04d}",
            f"+1 {a} {b} {c:04d}",
            f"({a}){b}-{c:04d}",
            f"{a}-{b}-{c:04d} ext {rng.randint(2, 999)}",
        ]
    )


def _zip(w: _Writer, rng: random.Random) -> None:
    code = f"{rng.randint(1001, 99950):05d}"
    if rng.random() < 0.2:
        code += f"-{rng.randint(1, 9999):04d}"
    w.phi(code, "location", "zip", (0, 3))


def _street(w: _Writer, pools: _Pools) -> None:
    rng = pools.rng
    suffix = rng.choice(
        ["Road", "Rd", "Street", "St.", "Lane", "Ln", "Avenue", "Ave", "Drive", "Dr.", "Court",
         "Way", "Terrace", "Circle", "Path", "Trail", "Pike"]
    )  # fmt: skip
    text = f"{rng.randint(1, 4999)} {rng.choice(pools.streets)} {suffix}"
    if rng.random() < 0.3:
        text += rng.choice(
            [f", Apt {rng.randint(1, 40)}{rng.choice('ABC')}", f" #{rng.randint(2, 30)}"]
        )
    w.phi(text, "location", "street")


def _route(w: _Writer, rng: random.Random) -> None:
    text = rng.choice(
        [
            f"Route {rng.randint(1, 140)}",
            f"Rte {rng.randint(1, 99)}{rng.choice(['', 'A'])}",
            f"Highway {rng.randint(1, 99)}",
            f"State Road {rng.randint(10, 300)}",
            f"County Road {rng.randint(1, 60)}",
        ]
    )
    w.phi(text, "location", "street")


def _number(w: _Writer, rng: random.Random, kind: str) -> None:
    """A labelled or shaped number; the label stays outside the identifier's span."""
    d = rng.randint
    if kind == "ssn":
        label = rng.choice(["SSN: ", "ssn: ", "SSN ", "Social Security number ", "SS# "])
        value = rng.choice(
            [f"{d(100, 899)}-{d(10, 99)}-{d(1000, 9999)}", f"{d(100, 899)} {d(10, 99)} {d(1000, 9999)}",
             f"{d(100000000, 899999999)}"]
        )  # fmt: skip
    elif kind == "mrn":
        label = rng.choice(["MRN: ", "MRN ", "MR# ", "medical record number ", "Med Rec #"])
        value = rng.choice(
            [f"{d(1000000, 99999999)}", f"A{d(100000, 9999999)}", f"{d(10, 99)}-{d(10000, 99999)}"]
        )
    elif kind == "account":
        label = rng.choice(["Acct #: ", "account number ", "billing account ", "Account: "])
        value = rng.choice(
            [f"{d(10000000, 99999999)}", f"{d(1000, 9999)}-{d(100, 999)}-{d(10, 99)}"]
        )
    elif kind == "plan":
        label = rng.choice(
            ["member ID ", "Medicaid ID ", "policy #", "insurance ID: ", "subscriber ID "]
        )
        value = rng.choice(
            [f"XJH{d(100000, 999999)}", f"{d(10000000, 99999999)}A", f"HMO-{d(1000000, 9999999)}"]
        )
    elif kind == "ip":
        label = rng.choice(["from ", "IP address ", "from IP ", "at "])
        value = f"{d(10, 223)}.{d(0, 255)}.{d(0, 255)}.{d(1, 254)}"
    elif kind == "device":
        label = rng.choice(["serial no. ", "SN: ", "serial number ", "device ID "])
        value = rng.choice(
            [f"PJN{d(100000, 999999)}H", f"{d(10, 99)}-{d(1000, 9999)}-AB", f"RZ{d(10000, 99999)}"]
        )
    elif kind == "license":
        label = rng.choice(["driver's license ", "license # ", "NPI ", "DEA # "])
        value = rng.choice(
            [
                f"S{d(100, 999)}-{d(1000, 9999)}-{d(1000, 9999)}",
                f"{d(1000000000, 1999999999)}",
                f"B{rng.choice('CDFM')}{d(1000000, 9999999)}",
            ]
        )
    elif kind == "plate":
        label = rng.choice(["license plate ", "plate "])
        value = f"{d(1, 9)}{rng.choice(['KDL', 'XRT', 'BMW', 'PQA'])}{d(100, 999)}"
    elif kind in ("phone", "fax"):
        label = (
            rng.choice(["fax ", "Fax: ", "faxed to "]) if kind == "fax"
            else rng.choice(["phone ", "cell ", "tel: ", "at ", "call ", "Ph: ", "home phone "])
        )  # fmt: skip
        value = _phone_text(rng)
    else:
        raise ValueError(kind)
    w.t(label).phi(value, "number", kind)


# -- note sections ---------------------------------------------------------------------------------

_Section = Callable[[_Writer, _Pools, dict[str, tuple[str, str]]], None]

_RELATIONS = (
    "daughter", "son", "wife", "husband", "sister", "brother", "mother", "father", "niece",
    "nephew", "granddaughter", "grandson", "partner", "neighbor", "friend", "caregiver",
)  # fmt: skip


def _header(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    first, last = cast["patient"]
    shape = rng.randrange(4)
    if shape == 0:
        w.t("Patient: ")
        _name(w, pools, first, last, style=rng.choice(["full", "last_first"]))
        w.t("   DOB: ")
        _date(w, rng, with_year=True)
        w.t("   ")
        _number(w, rng, "mrn")
        w.t("\n")
    elif shape == 1:
        w.t("Name: ")
        _name(w, pools, first, last, style="last_first")
        w.t("\nDate of service: ")
        _date(w, rng, with_year=True)
        w.t("\n")
    elif shape == 2:
        w.t("CLINIC NOTE - ")
        _date(w, rng, with_year=True)
        w.t("\n")
    else:
        w.t("Admission date: ")
        _date(w, rng, with_year=True)
        w.t("  Discharge date: ")
        _date(w, rng, with_year=True)
        w.t("\n")


def _opening(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    first, last = cast["patient"]
    age = rng.randint(19, 88)
    sex = rng.choice(["woman", "man", "female", "male"])
    shape = rng.randrange(5)
    if shape == 0:
        _name(w, pools, first, last, style="full")
        w.t(
            f" is a {age}-year-old {sex} with a history of {rng.choice(_PROBLEMS)} who presents with "
        )
        w.t(rng.choice(_COMPLAINTS) + ". ")
    elif shape == 1:
        w.t(f"{rng.choice(['Mr.', 'Ms.', 'Mrs.'])} ")
        _name(w, pools, first, last, style="last")
        w.t(f" is a {age} y/o {sex} seen today for {rng.choice(_COMPLAINTS)}. ")
    elif shape == 2:
        w.t(f"Pt is a {age}yo {sex} with {rng.choice(_PROBLEMS)}, here with ")
        w.t(rng.choice(_RELATIONS[:8]) + " ")
        _name(w, pools, *cast["relative"], style="first")
        w.t(f", reporting {rng.choice(_COMPLAINTS)} since ")
        _date(w, rng, with_year=False)
        w.t(". ")
    elif shape == 3:
        w.t("Seen with ")
        _name(w, pools, first, last, style="full")
        w.t(" on ")
        _date(w, rng)
        w.t(f" for {rng.choice(_COMPLAINTS)}. ")
    else:
        w.t("Patient ")
        _name(w, pools, first, last, style="full")
        w.t(f" ({age} {sex}) was admitted ")
        _date(w, rng)
        w.t(" after a fall at home. ")


def _social(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    rel = rng.choice(_RELATIONS)
    rel_first, rel_last = cast["relative"]
    shape = rng.randrange(9)
    if shape == 0:
        w.t("Lives in ")
        w.phi(pools.town(), "location", "city")
        w.t(f" with her {rel} ")
        _name(w, pools, rel_first, rel_last, style=rng.choice(["full", "first"]))
        w.t(". ")
    elif shape == 1:
        w.t(f"Her {rel}, ")
        _name(w, pools, rel_first, rel_last, style="full")
        w.t(", is the health care proxy (")
        _number(w, rng, "phone")
        w.t("). ")
    elif shape == 2:
        w.t(
            rng.choice(
                [
                    "Works at ",
                    "Works for ",
                    "Employed by ",
                    "Retired from ",
                    "Works as a driver for ",
                ]
            )
        )
        w.phi(pools.employer(), "employer", "employer")
        w.t(f"; {rng.choice(_HABITS)}. ")
    elif shape == 3:
        w.t(rng.choice(["Moved from ", "Originally from ", "Recently relocated to "]))
        w.phi(pools.town(), "location", "city")
        w.t(f" in {rng.randint(1990, 2024)}. ")
    elif shape == 4:
        w.t("Address: ")
        _street(w, pools)
        w.t(", ")
        w.phi(pools.town(), "location", "city")
        w.t(rng.choice([", ", " "]) + rng.choice(_STATES) + " ")
        _zip(w, rng)
        w.t(". ")
    elif shape == 5:
        w.t(f"Emergency contact: {rel} ")
        _name(w, pools, rel_first, rel_last, style="full")
        w.t(", ")
        _number(w, rng, "phone")
        w.t(". ")
    elif shape == 6:
        w.t("She was driving on ")
        _route(w, rng)
        w.t(" near ")
        w.phi(pools.town(), "location", "city")
        w.t(" when the accident happened. ")
    elif shape == 7:
        w.t("Lives at ")
        _street(w, pools)
        w.t(" in ")
        w.phi(pools.town(), "location", "city")
        w.t(f", {rng.choice(_STATE_NAMES)}, {rng.choice(_HABITS)}. ")
    else:
        w.t(f"Spoke with {rel} ")
        _name(w, pools, rel_first, rel_last, style=rng.choice(["full", "first"]))
        w.t(" by phone; she lives in ")
        w.phi(pools.town(), "location", "city")
        w.t(" and visits weekly. ")


def _identifiers(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    shape = rng.randrange(8)
    if shape == 0:
        w.t("Registration: ")
        _number(w, rng, "ssn")
        w.t(", ")
        _number(w, rng, "plan")
        w.t(". ")
    elif shape == 1:
        _number(w, rng, "account")
        w.t("; ")
        _number(w, rng, "mrn")
        w.t(". ")
    elif shape == 2:
        w.t("Patient portal login ")
        _number(w, rng, "ip")
        w.t(". ")
    elif shape == 3:
        w.t("Pacemaker interrogated, ")
        _number(w, rng, "device")
        w.t(". ")
    elif shape == 4:
        w.t("Results ")
        _number(w, rng, "fax")
        w.t(". ")
    elif shape == 5:
        w.t("Email: ")
        first, last = cast["patient"]
        domain = rng.choice(["mailbox.org", "example.net", "inbox.example.com"])
        w.phi(f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{domain}", "contact", "email")
        w.t(". ")
    elif shape == 6:
        w.t("Shared photos via ")
        w.phi(f"https://portal.example.org/share/{rng.randint(10000, 99999)}", "contact", "url")
        w.t(". ")
    else:
        w.t("Towed vehicle, ")
        _number(w, rng, "plate")
        w.t(". ")


def _mention(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    """The patient named again later, with nothing around the name to mark it."""
    rng = pools.rng
    first, last = cast["patient"]
    shape = rng.randrange(3)
    if shape == 0:
        w.phi(first, "name", "name")
        w.t(f" reports {rng.choice(['less pain', 'better sleep', 'no further falls'])}. ")
    elif shape == 1:
        w.t("Counseled ")
        w.phi(last, "name", "name")
        w.t(" on diet and exercise. ")
    else:
        w.t("Plan discussed with ")
        w.phi(first, "name", "name")
        w.t(" and family, who agree. ")


def _clinical(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    w.t(rng.choice(_CLINICAL)(rng) + " ")


def _dated_event(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    shape = rng.randrange(5)
    if shape == 0:
        w.t(f"Last {rng.choice(['colonoscopy', 'mammogram', 'echo', 'A1c'])} on ")
        _date(w, rng)
        w.t(". ")
    elif shape == 1:
        w.t("Follow up in clinic on ")
        _date(w, rng)
        w.t(f" at {rng.randint(8, 16)}:{rng.choice(['00', '15', '30', '45'])}. ")
    elif shape == 2:
        w.t(f"Started {rng.choice(_DRUGS)} ")
        _date(w, rng)
        w.t(", stopped ")
        _date(w, rng)
        w.t(". ")
    elif shape == 3:
        w.t("CT abdomen (")
        _date(w, rng)
        w.t(f") showed {rng.choice(['no acute process', 'a 4 mm nodule', 'diverticulosis'])}. ")
    else:
        w.t("Seen in the ED ")
        _date(w, rng, with_year=False)
        w.t(f" for {rng.choice(_COMPLAINTS)}. ")


def _care_team(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    first, last = pools.person()
    shape = rng.randrange(5)
    if shape == 0:
        w.t("Discussed with Dr. ")
        _name(w, pools, first, last, style=rng.choice(["last", "full"]))
        w.t(f" ({rng.choice(['cardiology', 'GI', 'nephrology'])}), who agrees. ")
    elif shape == 1:
        w.t("PCP: ")
        _name(w, pools, first, last, style="full")
        w.t(", MD. ")
    elif shape == 2:
        w.t("Case reviewed with ")
        _name(w, pools, first, last, style="full")
        w.t(f", {rng.choice(['NP', 'PA-C', 'RN', 'LCSW'])}. ")
    elif shape == 3:
        w.t("Referred by Dr. ")
        _name(w, pools, first, last, style="initial")
        w.t(". ")
    else:
        w.t("Per her ")
        w.t(rng.choice(_RELATIONS) + " ")
        _name(w, pools, *cast["relative"], style="first")
        w.t(f", she {rng.choice(['has been more confused', 'missed doses', 'fell twice'])}. ")


def _signature(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    rng = pools.rng
    first, last = pools.person()
    shape = rng.randrange(3)
    if shape == 0:
        w.t("\nElectronically signed by ")
        _name(w, pools, first, last, style="full")
        w.t(", MD on ")
        _date(w, rng, with_year=True)
    elif shape == 1:
        w.t("\n")
        _name(w, pools, first, last, style="full")
        w.t(f", {rng.choice(['MD', 'DO', 'NP', 'RN'])}")
    else:
        w.t("\nDictated by: ")
        _name(w, pools, first, last, style="full")
        w.t(" ")
        _number(w, rng, "phone")


def _comment(w: _Writer, pools: _Pools, cast: dict[str, tuple[str, str]]) -> None:
    """A CDS override comment: short, informal, still full of identifiers."""
    rng = pools.rng
    first, last = pools.person()
    shape = rng.randrange(4)
    if shape == 0:
        w.t("discussed with ")
        _name(w, pools, first, last, style=rng.choice(["full", "first"]))
        w.t(" from ")
        w.phi(pools.town(), "location", "city")
        w.t(", pt declines statin")
    elif shape == 1:
        w.t("override - already on anticoagulation per Dr. ")
        _name(w, pools, first, last, style="last")
        w.t(", recheck INR ")
        _date(w, rng, with_year=False)
    elif shape == 2:
        w.t("pt's daughter ")
        _name(w, pools, first, last, style="first")
        w.t(" will call back at ")
        w.phi(_phone_text(rng), "number", "phone")
    else:
        w.t("allergy list outdated, confirmed with pharmacy in ")
        w.phi(pools.town(), "location", "city")
        w.t(" on ")
        _date(w, rng)


# -- clinical text that carries no identifier (what precision is measured against) ----------------

_PROBLEMS = (
    "type 2 diabetes", "CHF (EF 35%)", "COPD", "Parkinson disease", "Crohn disease",
    "atrial fibrillation on Eliquis", "Hodgkin lymphoma in remission", "stage 3 CKD",
    "Graves disease", "Bell palsy", "HTN and HLD", "Alzheimer dementia",
)  # fmt: skip
_COMPLAINTS = (
    "chest pain", "shortness of breath", "3 days of cough", "left knee pain", "dizziness",
    "a fall", "dysuria", "worsening edema", "headache", "abdominal pain",
)  # fmt: skip
_DRUGS = ("Metformin", "Lasix", "Lisinopril", "Apixaban", "Prednisone", "Augmentin", "Keppra")
_HABITS = (
    "quit smoking 10 years ago", "drinks 2 beers on weekends", "no illicit drugs",
    "walks 30 minutes daily", "independent in ADLs",
)  # fmt: skip


def _c(template: str) -> Callable[[random.Random], str]:
    return lambda rng: template.format(
        a=rng.randint(90, 180), b=rng.randint(50, 110), c=rng.randint(2, 12),
        d=round(rng.uniform(4.0, 12.0), 1), e=rng.randint(1, 10), f=rng.randint(10, 59),
        drug=rng.choice(_DRUGS),
    )  # fmt: skip


_CLINICAL: Sequence[Callable[[random.Random], str]] = [
    _c("BP {a}/{b}, HR {b}, T 37.{e}, SpO2 9{e}% on RA."),
    _c("HbA1c {d}%, Cr 1.{e}, K 4.{e}, Hgb 1{e}.2."),
    _c("{drug} 500 mg PO BID, continue for {c} days."),
    _c("Pain {e}/10, worse with movement."),
    _c("Strength 5/5 in all extremities, reflexes 2+."),
    _c("Take 1/2 tab of {drug} nightly."),
    _c("Gleason 3+4=7, PSA {d}."),
    _c("NYHA class II, EF {f}%."),
    _c("Glasgow Coma Scale 15, Babinski negative."),
    _c("Murphy sign positive; RUQ ultrasound ordered."),
    _c("Foley removed on day {e}; voiding without difficulty."),
    _c("Route: PO. Frequency: q{e}h PRN."),
    _c("Seen at 10:{f}, vitals stable."),
    _c("Wells score {e}, D-dimer {d}."),
    _c("ECOG {e}, KPS {f}0%."),
    _c("ICD-10 E11.9, CPT 99214."),
    _c("Tylenol 650 mg q6h PRN, max 3 g/day."),
    _c("Apgar {e} and {e}, birth weight 3.{e} kg."),
    _c("Follow up in {c} weeks with labs."),
    _c("Allergies: Penicillin (rash), Sulfa."),
    _c("Plan: Start {drug}, recheck BMP in {c} days."),
    _c("Normal saline 1 L bolus given."),
    _c("Chest X-ray: no acute cardiopulmonary process."),
    _c("Down syndrome, Alzheimer screening negative."),
    _c("Hepatitis B vaccine series complete in {f}."),
    _c("Room 4{e}, bed 2."),
]

_NOTE_SECTIONS: Sequence[tuple[_Section, float]] = (
    (_opening, 1.0),
    (_social, 2.2),
    (_identifiers, 1.6),
    (_dated_event, 1.5),
    (_care_team, 1.2),
    (_mention, 0.8),
    (_clinical, 4.0),
)


def _note(pools: _Pools, index: int, half: str) -> Note:
    rng = pools.rng
    w = _Writer()
    cast = {"patient": pools.person(), "relative": pools.person()}
    if rng.random() < 0.15:
        _comment(w, pools, cast)
        return Note(f"{half}-{index:04d}", "comment", w.text(), tuple(w.ids))
    _header(w, pools, cast)
    _opening(w, pools, cast)
    sections, weights = zip(*_NOTE_SECTIONS[1:], strict=True)
    for section in rng.choices(sections, weights=weights, k=rng.randint(6, 11)):
        section(w, pools, cast)
    _signature(w, pools, cast)
    return Note(f"{half}-{index:04d}", "note", w.text(), tuple(w.ids))


def generate(half: str, n: int = NOTES_PER_HALF) -> list[Note]:
    """The half's notes: the same every time (fixed seed, fixed lists)."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {sorted(HALVES)}")
    rng = random.Random(HALVES[half])
    pools = _Pools(half, rng)
    return [_note(pools, i, half) for i in range(n)]
