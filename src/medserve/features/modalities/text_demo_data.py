"""A small SYNTHETIC labelled set of triage notes (generated from templates, no real patient).

Task: does a short free-text note describe a presentation that needs urgent review? The labels
follow the templates by construction; the set exists to demonstrate the text serving path
(tokenizer + transformer encoder in ONNX + classification head), not to make a clinical claim.
"""

from __future__ import annotations

import itertools
import random
from typing import Final

LABELS: Final = ["routine", "urgent"]

_URGENT: Final = [
    "crushing chest pain radiating to the left arm",
    "sudden severe headache, worst of her life",
    "new facial droop and slurred speech",
    "shortness of breath at rest with oxygen saturation of 86%",
    "vomiting blood since this morning",
    "confused and hypotensive, suspected sepsis",
    "severe abdominal pain with a rigid abdomen",
    "fever and neck stiffness with a purpuric rash",
    "syncope during exertion with palpitations",
    "anaphylaxis after a bee sting, lips swelling",
]
_ROUTINE: Final = [
    "requests a repeat prescription for hay fever tablets",
    "mild seasonal allergies, otherwise well",
    "annual review of well-controlled hypertension",
    "asks about travel vaccinations for a holiday",
    "small skin tag on the neck, not bothersome",
    "follow-up of a healed ankle sprain, walking normally",
    "routine blood test results reviewed, all normal",
    "wants advice on stopping smoking",
    "mild dry skin on the hands in winter",
    "medication review, no new symptoms",
]
_OPENERS: Final = [
    "Patient reports",
    "Seen today:",
    "Phone call -",
    "Triage note:",
    "Presents with",
]
_CLOSERS: Final = ["", " Vitals recorded.", " Plan discussed with patient.", " Seen by nurse."]


def notes(seed: int = 0) -> tuple[list[str], list[str]]:
    """``(texts, labels)``: every opener x finding x closer, shuffled reproducibly."""
    rows = [
        (f"{o} {f}.{c}", label)
        for label, findings in (("urgent", _URGENT), ("routine", _ROUTINE))
        for o, f, c in itertools.product(_OPENERS, findings, _CLOSERS)
    ]
    random.Random(seed).shuffle(rows)
    return [t for t, _ in rows], [label for _, label in rows]
