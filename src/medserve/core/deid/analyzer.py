"""The free-text layer: Presidio's analyzer on a blank spaCy pipeline, with context recognizers.

Why this shape: names and places in clinical notes are mostly in no list (a surname list misses
the patient's; a city list misses a small town), and no NER model may be downloaded at run time,
so what finds them is the context clinicians write around them: a title or credential ("Dr.",
", RN"), a relation ("her daughter Ayla"), a verb ("discussed with", "lives in", "works at"), the
subject of a note's first sentence ("... is a 67-year-old"). Gazetteers (census names, GeoNames
places; :mod:`medserve.core.deid.gazetteers`) add the common names and real places on top. A name
or place found once is then redacted wherever else the note repeats it.

Presidio supplies the engine (recognizer registry, tokenisation through ``spacy.blank("en")``,
scores and de-duplication); the recognizers are ours. Presidio's own deny-list recognizer builds
one regular expression from the list, which for 36,000 places is slow, so the gazetteers are
looked up token by token instead.

This module imports presidio and spaCy at import time: :mod:`medserve.core.phi` imports it only
when a text needs it, so a server that never de-identifies free text never loads them. The engine
is built once per process (thread-safe); calls are serialised because spaCy does not promise
thread safety.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator

import regex
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

from medserve.core.deid import gazetteers
from medserve.core.deid.patterns import NAME_WORD, STATE, STATE_NAMES, Redaction

__all__ = ["find"]

_COMMON = gazetteers.COMMON_WORDS

# Words that are never part of a person's or a place's name in a note.
_NOT_NAME = _COMMON | frozenset(
    w.casefold()
    for w in gazetteers.split_words(
        """
cardiology neurology oncology nephrology gastroenterology gi pulmonology urology psychiatry
pharmacy nursing rehab hospice radiology pathology surgery medicine pediatrics obstetrics
team staff family daughter son wife husband mother father sister brother patient
apixaban prednisone augmentin keppra warfarin lovenox gabapentin omeprazole pantoprazole
levothyroxine losartan hydrochlorothiazide furosemide simvastatin sertraline trazodone
albuterol tramadol oxycodone morphine ceftriaxone vancomycin zosyn cipro bactrim keflex
penicillin sulfa codeine ibuprofen acetaminophen naproxen insulin glargine lantus humalog
ct mri ekg ecg echo cxr x-ray ultrasound covid flu hiv hcv copd chf cad ckd dm htn
english spanish portuguese haitian creole russian chinese vietnamese arabic somali
catholic christian jewish muslim baptist methodist medicare medicaid blue cross
portal hospital clinic center health care home visit visits ed er
"""
    )
)

_NW = NAME_WORD
_INITIAL = r"(?:\s+[A-Z](?:\.|\b))"
_FULL = rf"{_NW}{_INITIAL}?(?:\s+{_NW}){{0,2}}"
_TWO_OR_MORE = rf"{_NW}{_INITIAL}?(?:\s+{_NW}){{1,2}}"
_PLACE = rf"{_NW}(?:[\s\-]+{_NW}){{0,2}}"
_ORG_WORD = r"[A-Z][A-Za-z0-9&'.\-]*"
_ORG = rf"{_ORG_WORD}(?:\s+(?:&|and|of|the|{_ORG_WORD}))*"
_SENTENCE_START = r"(?:^|(?<=[.!?;]\s{1,3})|(?<=\n\s{0,3})|(?<=:\s{1,3}))"

_RELATIONS = (
    r"daughter|son|wife|husband|spouse|partner|mother|mom|father|dad|sister|brother|niece"
    r"|nephew|granddaughter|grandson|grandmother|grandfather|grandma|grandpa|aunt|uncle|cousin"
    r"|friend|neighbou?r|caregiver|fianc[ée]e?|boyfriend|girlfriend|sibling"
    r"|step(?:daughter|son|mother|father)|proxy|HCP|POA|guardian|roommate|landlord|pastor"
    r"|co-?worker|boss|sponsor|children|kids|child"
)
_NAME_VERBS = (
    r"discussed\s+with|spoke\s+(?:with|to)|talked\s+(?:with|to)|reviewed\s+with|seen\s+with"
    r"|met\s+with|accompanied\s+by|brought\s+in\s+by|referred\s+by|signed\s+by|dictated\s+by"
    r"|co-?signed\s+by|evaluated\s+by|examined\s+by|seen\s+by|covered\s+by|counsell?ed|educated"
    r"|called|paged|texted|informed|notified|updated|instructed|reassured|visited\s+by"
    r"|care\s+of|c/o|attn:?|cc:?|per"
)
_SUBJECT_VERBS = (
    r"is|was|has|had|presents|presented|reports|reported|returns|returned|states|stated|denies"
    r"|denied|comes|came|arrives|arrived|underwent|complains|notes|agrees|declines|declined"
    r"|lives|works|called|continues|remains|tolerated|tolerates|endorses|feels|felt|developed"
    r"|woke|went|will|would|needs|wants|asks|asked|prefers|understands|verbalized"
)
_CREDENTIALS_LOOSE = r"MD|M\.D\.|DO|RN|NP|PA-C|APRN|DNP|FNP|FNP-BC|CNM|CRNA"
_CREDENTIALS_COMMA = r"PA|LPN|CNA|LCSW|LICSW|MSW|PharmD|DPM|DDS|DMD|PhD|RD|PT|OT|SLP|RRT|BSN|MPH"
_LOCATION_CUES = (
    r"lives|living|lived|resides|residing|resident|moved|moving|relocated|originally|born"
    r"|raised|grew\s+up|visiting|visited|travell?ed|trip|vacation(?:ed|ing)?|home|house|farm"
    r"|stationed|hometown|stays|staying|stayed|drove|drive|transferred|flew|camp(?:ing|ed)?"
)
_PLACE_NOUNS = (
    r"pharmacy|hospital|clinic|nursing\s+home|rehab|shelter|school|church|facility|center"
    r"|apartment|house|accident|collision|crash|fall"
)
_EMPLOYER_CUES = (
    r"works?\s+(?:as\s+an?\s+[a-z]+(?:\s+[a-z]+)?\s+)?(?:at|for)|worked\s+(?:at|for)"
    r"|working\s+(?:at|for)|(?:full|part)[\s-]time\s+at|employed\s+(?:at|by|with)"
    r"|employer\s*(?:is|:)?|retired\s+from|retired\s+after\s+\d+\s+years\s+at|job\s+at"
    r"|hired\s+(?:at|by)|laid\s+off\s+from|fired\s+from|owner\s+of|owns"
)

# (label, pattern, how to check the value): "all" rejects a value with any common word in it,
# "trim" drops common words from its ends.
_CONTEXT: list[tuple[str, str, str]] = [
    (
        "NAME",
        rf"(?i:\b(?:{_RELATIONS}))(?:'s)?(?:\s*[,:(]\s*|\s+(?:named\s+|is\s+|was\s+)?)"
        rf"(?P<v>{_FULL})",
        "trim",
    ),
    ("NAME", rf"(?P<v>{_NW})'s\s+(?i:{_RELATIONS})\b", "all"),
    (
        "NAME",
        rf"(?i:\b(?:{_NAME_VERBS}))\s+(?:(?:the\s+)?(?:patient|pt)\s*,?\s*)?(?P<v>{_FULL})",
        "trim",
    ),
    ("NAME", rf"(?P<v>{_FULL}),?\s+(?:{_CREDENTIALS_LOOSE})\b", "trim"),
    ("NAME", rf"(?P<v>{_FULL}),\s+(?:{_CREDENTIALS_COMMA})\b", "trim"),
    ("NAME", rf"{_SENTENCE_START}(?P<v>{_TWO_OR_MORE})(?=\s+(?:{_SUBJECT_VERBS})\b)", "all"),
    (
        "NAME",
        rf"{_SENTENCE_START}(?P<v>{_NW})(?=\s+(?:is\s+an?\s+\d|reports|states|denies|endorses"
        r"|presents|returns|was\s+seen|is\s+here|comes\s+in|feels|agrees|declines|understands))",
        "all",
    ),
    ("NAME", rf"\b(?:[Pp]atient|[Pp]t)\.?\s+(?P<v>{_TWO_OR_MORE})", "all"),
    (
        "CITY",
        rf"(?i:\b(?:{_LOCATION_CUES})(?:\s+(?:back|here|there|now|alone|together|nearby|up|down))?"
        rf"\s+(?:in|to|from|at|near|of|outside(?:\s+of)?)\s+)(?P<v>{_PLACE})",
        "trim",
    ),
    (
        "CITY",
        rf"(?i:\b(?:in|from|near|to|of|outside|at)\s+)(?P<v>{_PLACE})"
        rf"(?=,?\s+(?:{STATE_NAMES})\b|,\s*{STATE}\b)",
        "trim",
    ),
    ("CITY", rf"(?P<v>{_PLACE}),\s+(?:{STATE_NAMES})\b", "trim"),
    ("CITY", rf"(?P<v>{_PLACE}),\s*{STATE}\b", "trim"),
    ("CITY", rf"(?i:\b(?:near|from|outside\s+of)\s+)(?P<v>{_PLACE})", "all"),
    ("CITY", rf"(?i:\b(?:{_PLACE_NOUNS})\s+(?:in|at|near)\s+)(?P<v>{_PLACE})", "all"),
    ("EMPLOYER", rf"(?i:\b(?:{_EMPLOYER_CUES})\s+)(?P<v>(?:the\s+)?{_ORG})", "org"),
]

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _checked(value: str, start: int, how: str) -> tuple[int, int] | None:
    """The part of a matched value to keep as an identifier, or None."""
    if how == "org":
        value_end = len(value)
        trimmed = re.sub(r"(?:\s+(?:and|of|the|&))+$", "", value)
        value_end = len(trimmed)
        return (start, start + value_end) if value_end else None
    words = list(re.finditer(r"\S+", value))
    bad = [w.group(0).strip(".,").casefold() in _NOT_NAME for w in words]
    if how == "all":
        return None if any(bad) else (start, start + len(value))
    first, last = 0, len(words) - 1
    while first <= last and bad[first]:
        first += 1
    while last >= first and bad[last]:
        last -= 1
    if first > last:
        return None
    return (start + words[first].start(), start + words[last].end())


class _ContextRecognizer(EntityRecognizer):
    """Identifiers marked by the words around them (the ``v`` group of each pattern)."""

    def __init__(self) -> None:
        self._patterns = [
            (label, regex.compile(pattern, regex.MULTILINE), how)
            for label, pattern, how in _CONTEXT
        ]
        super().__init__(
            supported_entities=sorted({label for label, _, _ in _CONTEXT}), name="medserve-context"
        )

    def load(self) -> None:
        """Nothing to load: the patterns are compiled in the constructor."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for label, pattern, how in self._patterns:
            for m in pattern.finditer(text, overlapped=False):
                span = _checked(m.group("v"), m.start("v"), how)
                if span:
                    results.append(RecognizerResult(label, span[0], span[1], 0.85))
        return results


class _GazetteerRecognizer(EntityRecognizer):
    """Known places (GeoNames) and known first names followed by a capitalised word."""

    def __init__(self, lists: gazetteers.Gazetteers) -> None:
        self._lists = lists
        super().__init__(supported_entities=["CITY", "NAME"], name="medserve-gazetteers")

    def load(self) -> None:
        """Nothing to load: the lists are loaded once by :func:`gazetteers.load`."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if nlp_artifacts is None:
            return []
        tokens = list(nlp_artifacts.tokens)
        titled = [t.text[:1].isupper() and t.text[1:].islower() and t.is_alpha for t in tokens]
        results: list[RecognizerResult] = []
        places, first_names, last_names = (
            self._lists.places,
            self._lists.first_names,
            self._lists.last_names,
        )
        max_words = min(self._lists.max_place_words, 4)
        i = 0
        while i < len(tokens):
            if not titled[i]:
                i += 1
                continue
            hit = 0
            for n in range(min(max_words, len(tokens) - i), 0, -1):
                if not all(titled[i : i + n]):
                    continue
                phrase = " ".join(t.text for t in tokens[i : i + n]).casefold()
                if phrase in places and phrase not in _NOT_NAME:
                    hit = n
                    break
            if hit:
                end = tokens[i + hit - 1]
                results.append(RecognizerResult("CITY", tokens[i].idx, end.idx + len(end), 0.6))
                i += hit
                continue
            word = tokens[i].text.casefold()
            if (
                word in first_names
                and i + 1 < len(tokens)
                and titled[i + 1]
                and tokens[i + 1].text.casefold() not in _NOT_NAME
                and tokens[i].whitespace_
            ):
                n = 2
                if (
                    i + 2 < len(tokens)
                    and titled[i + 2]
                    and tokens[i + 2].text.casefold() in last_names
                ):
                    n = 3
                end = tokens[i + n - 1]
                results.append(RecognizerResult("NAME", tokens[i].idx, end.idx + len(end), 0.6))
                i += n
                continue
            i += 1
        return results


class _BlankEnglish(SpacyNlpEngine):
    """spaCy's rule-based English tokenizer and nothing else: no model is downloaded."""

    def load(self) -> None:
        # Presidio annotates the attribute as None until load(); it is a dict of pipelines.
        self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]


def _build() -> AnalyzerEngine:
    engine = _BlankEnglish(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.recognizers = []
    registry.add_recognizer(_ContextRecognizer())
    registry.add_recognizer(_GazetteerRecognizer(gazetteers.load()))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


_LOCK = threading.Lock()
_ENGINE: AnalyzerEngine | None = None


def engine() -> AnalyzerEngine:
    """The process's analyzer, built on first use."""
    global _ENGINE
    if _ENGINE is None:
        with _LOCK:
            if _ENGINE is None:
                _ENGINE = _build()
    return _ENGINE


def _propagate(text: str, spans: Iterable[Redaction]) -> Iterator[Redaction]:
    """Every other mention of a name or place word the note has already given away."""
    seen: dict[str, str] = {}
    for s in spans:
        if s.label == "NAME":
            for word in _words(text[s.start : s.end]):
                if (
                    len(word) > 1
                    and word.casefold() not in _NOT_NAME
                    and word not in ("Dr", "Mr", "Mrs", "Ms", "Prof", "Miss", "Mx")
                ):
                    seen.setdefault(word, "NAME")
        elif s.label == "CITY":
            place = text[s.start : s.end]
            if place.casefold() not in _NOT_NAME:
                seen.setdefault(place, "CITY")
    if not seen:
        return
    alternation = "|".join(re.escape(w) for w in sorted(seen, key=len, reverse=True))
    for m in re.finditer(rf"(?<![\w-])(?:{alternation})(?![\w-])", text):
        yield Redaction(m.start(), m.end(), seen[m.group(0)], "")


def find(text: str, found: list[Redaction]) -> list[Redaction]:
    """Redactions the analyzer adds to ``found`` (the regular-expression layer's), unmerged."""
    analyzer = engine()
    with _LOCK:
        results = analyzer.analyze(text=text, language="en", score_threshold=0.5)
    spans = [Redaction(r.start, r.end, r.entity_type, "") for r in results]
    return spans + list(_propagate(text, [*found, *spans]))
