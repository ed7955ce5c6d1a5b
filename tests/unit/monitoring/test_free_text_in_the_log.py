"""Free text in the prediction log, fail closed: by default only a keyed hash and the length
are kept (a de-identifier misses names it was never shown); de-identified text is opt-in."""

from __future__ import annotations

import numpy as np

from medserve.core.prediction_log import make_row_encoder, text_token
from medserve.core.registry.signature import FeatureSpec, Signature

SALT = b"k" * 32
NOTE = "Seen with her daughter Ottoline Quaxley, who lives in Brackenfold; lactate rising."
SIGNATURE = Signature(
    inputs=[
        FeatureSpec(name="age", type="float"),
        FeatureSpec(name="ward", type="string", categories=["icu", "er"]),
        FeatureSpec(name="note", type="string"),
    ]
)


def test_by_default_the_log_keeps_no_free_text() -> None:
    encode = make_row_encoder(SIGNATURE, SALT)
    [[age, ward, note]] = encode(np.array([[71.0, "icu", NOTE]], dtype=object))
    assert (age, ward) == (71.0, "icu")  # numbers and declared categories are kept
    assert note == text_token(NOTE, SALT)
    assert note.endswith(f"/{len(NOTE)}")
    assert "Quaxley" not in note
    assert "Brackenfold" not in note
    assert text_token(NOTE, SALT) != text_token(NOTE, b"o" * 32)  # keyed


def test_de_identified_text_is_opt_in() -> None:
    encode = make_row_encoder(SIGNATURE, SALT, keep_text=True)
    [[_, _, note]] = encode(
        np.array([[71.0, "er", "Call 617-555-0123 about lactate"]], dtype=object)
    )
    assert "lactate" in note
    assert "617-555-0123" not in note
