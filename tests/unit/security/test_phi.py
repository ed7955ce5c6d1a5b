"""Safe Harbor de-identification: one test per identifier category, then properties."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medserve.core.phi import (
    deidentify_record,
    deidentify_text,
    load_or_create_salt,
    pseudonymize,
    zip3,
)
from medserve.core.registry.signature import FeatureSpec, Signature

SALT = b"s" * 32


def _gone(text: str, *secrets: str) -> str:
    out = deidentify_text(text)
    for s in secrets:
        assert s not in out, (s, out)
    return out


# -- one test per Safe Harbor category (45 CFR 164.514(b)(2)(i)(A)-(R)) ----------------------


def test_names_marked_by_title_or_label() -> None:
    out = _gone(
        "Patient: John Q. Smith was seen by Dr. Alice Brown; next of kin: Mary Smith. Mrs. Jones",
        "John",
        "Smith",
        "Alice",
        "Brown",
        "Mary",
        "Jones",
    )
    assert out.startswith("Patient: [NAME]")
    assert "was seen by [NAME]" in out


def test_geography_below_state() -> None:
    out = _gone(
        "Lives at 123 Maple Street, Apt 4B, Springfield, MA 01103-2201. PO Box 77.",
        "123 Maple",
        "Springfield",
        "01103",
        "2201",
        "Box 77",
    )
    assert "MA 011" in out  # state kept, ZIP generalised to three digits


def test_zip_codes_keep_three_digits_and_small_areas_become_000() -> None:
    assert zip3("02115") == "021"
    assert zip3("03601-1234") == "000"  # 036 is a restricted (<= 20,000 people) prefix
    assert zip3("893") == "000"
    assert "zip: 100" in deidentify_text("zip: 10027")
    assert "ZIP code 000" in deidentify_text("ZIP code 55601")


@pytest.mark.parametrize(
    ("text", "year"),
    [
        ("admitted 2024-01-05", "2024"),
        ("admitted 2024-01-05T10:30:00Z", "2024"),
        ("DOB 03/14/1951", "1951"),
        ("seen 4-5-21", "2021"),
        ("on March 3, 2021", "2021"),
        ("on 5th June 2020", "2020"),
        ("since Jan 2019", "2019"),
    ],
)
def test_dates_keep_only_the_year(text: str, year: str) -> None:
    out = deidentify_text(text)
    assert year in out
    assert not re.search(r"\b(?:0?3|14|0?5|0?1|4|5th|Jan|March|June)\b[/ ,.-]", out), out


def test_dates_without_year_are_removed() -> None:
    assert deidentify_text("follow up Feb 14 please") == "follow up [DATE] please"
    assert deidentify_text("on 3rd of July") == "on [DATE]"


def test_birth_years_revealing_age_over_89_are_removed() -> None:
    old = dt.date.today().year - 95
    assert str(old) not in deidentify_text(f"DOB 01/02/{old}")


def test_ages_over_89_grouped() -> None:
    out = deidentify_text("a 92-year-old woman; age: 95; 101 yo man; aged 45; 89 years old")
    assert "92" not in out
    assert "95" not in out
    assert "101" not in out
    assert out.count("90+") == 3
    assert "aged 45" in out
    assert "89 years old" in out


def test_phone_numbers() -> None:
    _gone(
        "call (617) 555-0134 or 617.555.0100 x12 or +1 617-555-0199 or +44 20 7946 0958",
        "555-0134",
        "555.0100",
        "555-0199",
        "7946",
    )


def test_fax_numbers() -> None:
    out = _gone("Fax: 617-555-0199", "555-0199")
    assert out == "Fax: [FAX]"


def test_email_addresses() -> None:
    assert deidentify_text("mail john.smith+x@example-hospital.org.") == "mail [EMAIL]."


def test_social_security_numbers() -> None:
    _gone("SSN 123-45-6789 and SSN: 987654321", "123-45-6789", "987654321")


def test_medical_record_numbers() -> None:
    out = _gone("MRN: A1234567; medical record number 55-1234", "A1234567", "55-1234")
    assert "[MRN]" in out


def test_health_plan_beneficiary_numbers() -> None:
    _gone("member ID: XJH-99812, Medicare #1EG4TE5MK73", "XJH-99812", "1EG4TE5MK73")


def test_account_numbers() -> None:
    _gone("acct # 554433 and account number 99-100-7", "554433", "99-100-7")


def test_certificate_and_licence_numbers() -> None:
    _gone("DEA: AB1234563, driver's license D123-4567, certificate no. C-77812", "AB1234563")
    out = deidentify_text("driver's license D123-4567, certificate no. C-77812")
    assert "D123-4567" not in out
    assert "C-77812" not in out


def test_vehicle_identifiers() -> None:
    _gone("license plate 7ABC123; VIN 1HGCM82633A004352", "7ABC123", "1HGCM82633A004352")
    assert deidentify_text("car 1HGCM82633A004352 parked") == "car [VEHICLE_ID] parked"


def test_device_identifiers() -> None:
    _gone("pump serial no. SN-88-12; device ID: PM-0042; UDI: 0100812345", "SN-88-12", "PM-0042")


def test_urls() -> None:
    _gone("see https://portal.example.org/patients/123?x=1 and www.example.org/me", "portal", "www")


def test_ip_addresses() -> None:
    out = _gone("from 192.168.1.10 and fe80::1ff:fe23:4567:890a at 10:30:00", "192.168", "fe80")
    assert "10:30:00" in out  # a clock time is not an address


def test_other_unique_identifiers_long_numbers() -> None:
    assert deidentify_text("ref 123456789 glucose 5.6") == "ref [ID] glucose 5.6"


def test_other_unique_identifiers_marked_in_signature() -> None:
    sig = Signature(
        inputs=[
            FeatureSpec(name="study_code", type="string", identifier=True),
            FeatureSpec(name="glucose"),
        ]
    )
    out = deidentify_record({"study_code": "ZZ-TRIAL-9", "glucose": 5.6}, sig, salt=SALT)
    assert out["study_code"] == pseudonymize("ZZ-TRIAL-9", salt=SALT)
    assert out["glucose"] == 5.6


def test_clinical_text_survives() -> None:
    text = "BP 120/80, glucose 5.6 mmol/L, HbA1c 7.1%, 2 tablets daily for 10 days."
    assert deidentify_text(text) == text


# -- structured records -------------------------------------------------------------------------


def test_record_fields_by_name() -> None:
    rec = {
        "mrn": "A1234567",
        "first_name": "John",
        "zip": "02115",
        "admitted": dt.date(2024, 1, 5),
        "age": 93,
        "note": "Mr. Jones called 617-555-0134",
        "glucose": 5.6,
        "smoker": True,
        "labs": [{"email": "a@b.org", "value": 1.0}],
        "missing": None,
    }
    out = deidentify_record(rec, salt=SALT)
    assert out["mrn"].startswith("pid_")
    assert out["first_name"].startswith("pid_")
    assert out["zip"] == "021"
    assert out["admitted"] == "2024"
    assert out["age"] == 90
    assert out["note"] == "[NAME] called [PHONE]"
    assert out["glucose"] == 5.6
    assert out["smoker"] is True
    assert out["missing"] is None
    assert out["labs"][0]["email"].startswith("pid_")
    assert out["labs"][0]["value"] == 1.0
    assert "A1234567" not in repr(out)
    assert "John" not in repr(out)
    assert rec["mrn"] == "A1234567"  # input untouched


# -- pseudonyms and the salt --------------------------------------------------------------------


def test_pseudonym_is_stable_normalized_and_salted() -> None:
    a = pseudonymize("MRN123", salt=SALT)
    assert a == pseudonymize(" mrn123 ", salt=SALT)
    assert a != pseudonymize("MRN123", salt=b"t" * 32)
    assert re.fullmatch(r"pid_[0-9a-f]{24}", a)
    with pytest.raises(ValueError, match="salt"):
        pseudonymize("x", salt=b"")


def test_salt_created_once_private_and_reused(tmp_path: Path) -> None:
    salt = load_or_create_salt(tmp_path)
    assert len(salt) == 32
    path = tmp_path / "keys" / "phi_salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(tmp_path) == salt
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def _salt_worker(home: str) -> bytes:
    return load_or_create_salt(Path(home))


def test_salt_agreed_by_concurrent_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        salts = pool.map(_salt_worker, [str(tmp_path)] * 8)
    assert len(set(salts)) == 1


# -- properties ----------------------------------------------------------------------------------

_filler = st.text(alphabet="abcdefghij klmnop,;", max_size=30)
_ssn = st.tuples(st.integers(100, 899), st.integers(10, 99), st.integers(1000, 9999)).map(
    lambda t: f"{t[0]}-{t[1]}-{t[2]}"
)
_phone = st.tuples(st.integers(200, 999), st.integers(200, 999), st.integers(0, 9999)).map(
    lambda t: f"({t[0]}) {t[1]}-{t[2]:04d}"
)
_email = st.tuples(
    st.from_regex(r"[a-z][a-z0-9._]{1,10}", fullmatch=True),
    st.from_regex(r"[a-z]{2,10}\.(org|com|net)", fullmatch=True),
).map(lambda t: f"{t[0]}@{t[1]}")
_date = st.dates(min_value=dt.date(1940, 1, 1), max_value=dt.date(2030, 12, 31)).map(
    lambda d: d.strftime(["%Y-%m-%d", "%m/%d/%Y", "%B %d, %Y", "%d %B %Y"][d.toordinal() % 4])
)


@settings(max_examples=200, deadline=None)
@given(before=_filler, after=_filler, ssn=_ssn, phone=_phone, email=_email)
def test_identifiers_embedded_in_text_never_survive(
    before: str, after: str, ssn: str, phone: str, email: str
) -> None:
    out = deidentify_text(f"{before} {ssn} {after} {phone} {before} {email} {after}")
    for value in (ssn, phone, email):
        assert value not in out
    assert ssn.split("-")[2] not in out.replace(before, "").replace(after, "")


@settings(max_examples=200, deadline=None)
@given(before=_filler, date=_date)
def test_dates_embedded_in_text_keep_only_the_year(before: str, date: str) -> None:
    out = deidentify_text(f"{before} on {date}.")
    assert date not in out
    year = re.search(r"\d{4}", date)
    assert year is not None
    assert year.group(0) in out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_processed_and_idempotent(text: str) -> None:
    once = deidentify_text(text)
    assert deidentify_text(once) == once


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(alphabet="ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=40),
    other=st.floats(allow_nan=False),
)
def test_flagged_identifier_values_never_appear_in_records(value: str, other: float) -> None:
    sig = Signature(inputs=[FeatureSpec(name="x", type="string", identifier=True)])
    out = deidentify_record({"x": value, "y": other}, sig, salt=SALT)
    assert value not in repr(out)
    assert out["y"] == other
