"""The identifiers the privacy issue found surviving in the prediction log, one test each."""

from __future__ import annotations

import pytest

from medserve.core.phi import deidentify_text


def _gone(text: str, *secrets: str) -> str:
    out = deidentify_text(text)
    for s in secrets:
        assert s not in out, (s, out)
    return out


def test_ssn_with_spaces_is_fully_redacted() -> None:
    out = _gone("ssn: 987 65 4321", "987", "65", "4321")
    assert out == "ssn: [SSN]"


def test_day_month_abbreviation_year_keeps_only_the_year() -> None:
    out = _gone("Admitted 11-Jan-2026 for observation.", "11-Jan", "Jan")
    assert "2026" in out


def test_ipv4_before_a_full_stop() -> None:
    out = _gone("Portal login from 10.24.7.195.", "10.24", "7.195")
    assert out.endswith("[IP].")


def test_full_zip_after_state_without_comma() -> None:
    out = _gone("Lives at 12 Oak St, Springfield MA 01103.", "01103", "Springfield", "12 Oak")
    assert "MA 011" in out  # state kept, ZIP to three digits


def test_route_number() -> None:
    _gone("Rear-ended on Route 9 near the mall.", "Route 9")


def test_relative_named_without_title() -> None:
    out = _gone("Her daughter Ayla Korhonen is the proxy. Ayla visits daily.", "Ayla", "Korhonen")
    assert "daughter [NAME]" in out


def test_city_after_lives_in() -> None:
    _gone("She lives in Wolfeboro with her son.", "Wolfeboro")


def test_employer_after_works_at() -> None:
    _gone("He works at Quarry Ridge Logistics as a driver.", "Quarry Ridge", "Logistics")


def test_name_without_title_as_subject() -> None:
    _gone("Nout Ciernikova is a 68-year-old man with CKD.", "Nout", "Ciernikova")


def test_cds_override_comment_keeps_no_name_or_city() -> None:
    _gone("discussed with Rayla Mthonti from Paia, pt declines statin", "Rayla", "Mthonti", "Paia")


@pytest.mark.parametrize(
    "text",
    [
        "BP 120/80, glucose 5.6 mmol/L, HbA1c 7.1%, 2 tablets daily for 10 days.",
        "Pain 4/10, strength 5/5, take 1/2 tab nightly.",
        "Follow up with Cardiology in 2 weeks. Normal saline 1 L bolus given.",
        "Parkinson disease; Babinski negative; Wells score 2.",
    ],
)
def test_clinical_text_is_left_alone(text: str) -> None:
    assert deidentify_text(text) == text
