"""PII detection: each validated type on positives and hard negatives, exact offsets, overlap
resolution, consistent redaction, and quality on the presidio-research dev set."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from keel.errors import UsageError
from keel.guardrails.measure import evaluate_pii, load_presidio, micro_average
from keel.guardrails.pii import ENTITY_TYPES, Redactor, detect_pii
from keel.guardrails.spans import Span, resolve_overlaps

PII_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pii"


def found(text: str, kind: str) -> list[str]:
    return [s.text for s in detect_pii(text) if s.entity_type == kind]


def assert_offsets(text: str) -> None:
    for span in detect_pii(text):
        assert text[span.start : span.end] == span.text


# --- EMAIL_ADDRESS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("Write to jane.doe@example.com for details.", "jane.doe@example.com"),
        ("From: Jane <jane+news@mail.example.co.uk>", "jane+news@mail.example.co.uk"),
        ("(contact: o'brien@dept.example.org)", "o'brien@dept.example.org"),
        ("mail ME at J_Smith-2@Example.IO.", "J_Smith-2@Example.IO"),
    ],
)
def test_email_positives(text: str, email: str) -> None:
    assert found(text, "EMAIL_ADDRESS") == [email]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "the @mention and user@localhost are not addresses",
        "version 2.0@beta, price 3@5",
        "see https://user:s3cret@db.example.com/app for the dump",
    ],
)
def test_email_negatives(text: str) -> None:
    assert found(text, "EMAIL_ADDRESS") == []


# --- PHONE_NUMBER -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("Call me at (415) 555-2671 tomorrow.", "(415) 555-2671"),
        ("Office: +44 20 7946 0958", "+44 20 7946 0958"),
        ("Tel.: +49 30 901820", "+49 30 901820"),
        ("reach me on +91 98765 43210 after six", "+91 98765 43210"),
        ("Fax: 0049 89 1234567", "0049 89 1234567"),
        ("my mobile is 06 12 34 56 78", "06 12 34 56 78"),
        ("phone 212.555.0199 x204", "212.555.0199 x204"),
    ],
)
def test_phone_positives(text: str, phone: str) -> None:
    assert found(text, "PHONE_NUMBER") == [phone]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "Order 4155552671 shipped on 2023-04-05.",  # order number, bare digits
        "Invoice no. 2023-1044-77 is overdue",
        "Part number 1234-5678-90 is out of stock",  # product code
        "Released 2024-01-15 12:30:45 UTC",  # timestamp
        "population grew from 1 200 000 to 1 350 000",
        "card 4111 1111 1111 1111 was charged",  # a card number, not a phone
        "my SSN is 536-22-1234",
    ],
)
def test_phone_negatives(text: str) -> None:
    assert found(text, "PHONE_NUMBER") == []


# --- CREDIT_CARD --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("card 4111 1111 1111 1111 was charged", "4111 1111 1111 1111"),
        ("Amex: 3782-822463-10005", "3782-822463-10005"),
        ("my mastercard 5555555555554444 expired", "5555555555554444"),
        ("pay with 2223000048400011 please", "2223000048400011"),
        ("Discover 6011 1111 1111 1117", "6011 1111 1111 1117"),
        ("JCB 3530111333300000", "3530111333300000"),
        ("Diners 30569309025904", "30569309025904"),
    ],
)
def test_card_positives(text: str, card: str) -> None:
    assert found(text, "CREDIT_CARD") == [card]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 was charged",  # Luhn fails
        "number 1234 5678 9012 3456",  # Luhn fails, no issuer
        "tracking 9400 1000 0000 0000 0000 00",
        "id 4111-1111 1111-1111",  # mixed separators
        "Order 79927398713 was placed",  # Luhn-valid, no issuer prefix
    ],
)
def test_card_negatives(text: str) -> None:
    assert found(text, "CREDIT_CARD") == []


# --- IBAN_CODE ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iban"),
    [
        ("IBAN GB82 WEST 1234 5698 7654 32, thanks", "GB82 WEST 1234 5698 7654 32"),
        ("to DE89370400440532013000.", "DE89370400440532013000"),
        ("fr1420041010050500013m02606 is mine", "fr1420041010050500013m02606"),
        ("NL91ABNA0417164300 and more", "NL91ABNA0417164300"),
    ],
)
def test_iban_positives(text: str, iban: str) -> None:
    assert found(text, "IBAN_CODE") == [iban]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "IBAN GB83 WEST 1234 5698 7654 32",  # bad checksum
        "DE89370400440532013001",  # bad checksum
        "GB82 WEST 1234 5698 7654",  # too short for GB
        "XX82WEST12345698765432",  # no such country
    ],
)
def test_iban_negatives(text: str) -> None:
    assert found(text, "IBAN_CODE") == []


# --- US_SSN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ssn"),
    [
        ("Here's my SSN: 536-22-1234", "536-22-1234"),
        ("social security number 536 22 1234", "536 22 1234"),
        ("SSN 536221234", "536221234"),
        ("id 078-12-3456 on file", "078-12-3456"),
    ],
)
def test_ssn_positives(text: str, ssn: str) -> None:
    assert found(text, "US_SSN") == [ssn]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "SSN 000-12-3456",  # area 000
        "SSN 666-12-3456",  # area 666
        "SSN 912-12-3456",  # area 9xx
        "SSN 536-00-1234",  # group 00
        "SSN 536-22-0000",  # serial 0000
        "code 536221234 in the log",  # bare digits without context
        "serial 536 22 1234",  # spaces without context
    ],
)
def test_ssn_negatives(text: str) -> None:
    assert found(text, "US_SSN") == []


# --- IP_ADDRESS ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ip"),
    [
        ("blocked from 192.168.10.254.", "192.168.10.254"),
        ("client_ip = ?|106.31.73.20|", "106.31.73.20"),
        ("server at 2001:db8:85a3::8a2e:370:7334 is down", "2001:db8:85a3::8a2e:370:7334"),
        ("loopback fe80::1 only", "fe80::1"),
    ],
)
def test_ip_positives(text: str, ip: str) -> None:
    assert found(text, "IP_ADDRESS") == [ip]
    assert_offsets(text)


@pytest.mark.parametrize(
    "text",
    [
        "upgrade to version 1.2.3.4 today",
        "v1.2.3.4 is out",
        "256.1.1.1 is not an address",
        "see section 2.1.3.4 of the spec",
        "1.2.3.4.5 is a version",
        "enzyme EC 1.14.16.2 hydroxylates",
        "meet at 12:30:45 sharp",
    ],
)
def test_ip_negatives(text: str) -> None:
    assert found(text, "IP_ADDRESS") == []


# --- heuristic types ----------------------------------------------------------------------


def test_heuristic_types_on_a_letter() -> None:
    text = (
        "Dear Dr. Maria Gonzalez,\n"
        "my name is Peter Novak, I am 42 years old and live at 1600 Pennsylvania Avenue, "
        "Apt 5, Washington, DC 20500. My driver's license number is D1234567.\n"
        "We met on March 3, 2021 at www.example.org."
    )
    spans = {(s.entity_type, s.text) for s in detect_pii(text)}
    assert ("PERSON", "Maria Gonzalez") in spans
    assert ("PERSON", "Peter Novak") in spans
    assert ("AGE", "42") in spans
    assert ("STREET_ADDRESS", "1600 Pennsylvania Avenue, Apt 5, Washington, DC 20500") in spans
    assert ("US_DRIVER_LICENSE", "D1234567") in spans
    assert ("DATE_TIME", "March 3, 2021") in spans
    assert ("DOMAIN_NAME", "www.example.org") in spans
    assert_offsets(text)


def test_heuristics_stay_quiet_on_plain_prose() -> None:
    text = (
        "The committee reviewed the results of the 2019 survey and found that most of the "
        "respondents preferred shorter meetings. Version 3.2 of the tool fixes the bug."
    )
    kinds = {s.entity_type for s in detect_pii(text)}
    assert kinds <= {"DATE_TIME"}


def test_domains_not_inside_emails_or_file_names() -> None:
    text = "mail bob@example.com, run setup.py, read notes.md, visit example.org"
    assert found(text, "DOMAIN_NAME") == ["example.org"]


# --- API: offsets, overlaps, filters ------------------------------------------------------


def test_spans_sorted_and_non_overlapping() -> None:
    text = (
        "Call +1 (415) 555-2671 or mail a@b.io; card 4111111111111111; "
        "IBAN DE89370400440532013000; ip 10.0.0.1; ssn 536-22-1234"
    )
    spans = detect_pii(text)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    for a, b in itertools.pairwise(spans):
        assert a.end <= b.start
    assert {s.entity_type for s in spans} >= {
        "PHONE_NUMBER",
        "EMAIL_ADDRESS",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "US_SSN",
    }
    assert_offsets(text)


def test_resolve_overlaps_prefers_score_then_length() -> None:
    spans = [
        Span("A", 0, 10, "x" * 10, 0.5),
        Span("B", 2, 6, "x" * 4, 0.9),
        Span("C", 5, 20, "x" * 15, 0.9),
        Span("D", 20, 25, "x" * 5, 0.1),
    ]
    kept = resolve_overlaps(spans)
    assert [s.entity_type for s in kept] == ["C", "D"]  # C: same score as B, longer


def test_entities_filter_and_min_score() -> None:
    text = "Call (415) 555-2671 about card 4111 1111 1111 1111"
    assert [s.entity_type for s in detect_pii(text, ["CREDIT_CARD"])] == ["CREDIT_CARD"]
    # a filtered call is the matching part of the unfiltered one
    full = detect_pii(text)
    assert detect_pii(text, {"PHONE_NUMBER"}) == [
        s for s in full if s.entity_type == "PHONE_NUMBER"
    ]
    assert all(s.score >= 0.99 for s in detect_pii(text, min_score=0.99))
    with pytest.raises(UsageError):
        detect_pii(text, ["NOT_A_TYPE"])
    assert set(ENTITY_TYPES) >= {s.entity_type for s in full}
    assert detect_pii("") == []


# --- Redactor -----------------------------------------------------------------------------


def test_redactor_consistent_across_calls_and_restorable() -> None:
    redactor = Redactor()
    t1 = "I am jane@example.com, call (415) 555-2671."
    t2 = "Again: jane@example.com and bob@example.com"
    r1 = redactor.redact(t1, detect_pii(t1))
    r2 = redactor.redact(t2, detect_pii(t2))
    assert r1 == "I am <EMAIL_ADDRESS_1>, call <PHONE_NUMBER_1>."
    assert r2 == "Again: <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>"
    assert redactor.restore(r2) == t2

    # a new redactor continues the conversation from the saved mapping
    saved = dict(redactor.mapping)
    later = Redactor(saved)
    t3 = "bob@example.com wrote to carol@example.com"
    assert later.redact(t3, detect_pii(t3)) == "<EMAIL_ADDRESS_2> wrote to <EMAIL_ADDRESS_3>"
    assert saved == {
        "jane@example.com": "<EMAIL_ADDRESS_1>",
        "(415) 555-2671": "<PHONE_NUMBER_1>",
        "bob@example.com": "<EMAIL_ADDRESS_2>",
    }
    # the mapping property is a copy
    later.mapping.clear()
    assert later.mapping


def test_redactor_ignores_overlapping_spans() -> None:
    text = "abcdefghij"
    spans = [Span("X", 0, 5, "abcde", 0.9), Span("Y", 3, 8, "defgh", 0.5)]
    assert Redactor().redact(text, spans) == "<X_1>fghij"


# --- evaluation helpers -------------------------------------------------------------------


def test_evaluate_pii_matching_rules() -> None:
    sample = {
        "full_text": "Mail jane@example.com or call (415) 555-2671.",
        "spans": [
            {"entity_type": "EMAIL_ADDRESS", "start_position": 5, "end_position": 21},
            # gold phone shifted: the prediction still covers >= 50% of it
            {"entity_type": "PHONE_NUMBER", "start_position": 35, "end_position": 44},
            {"entity_type": "PERSON", "start_position": 0, "end_position": 4},
        ],
    }
    result = evaluate_pii([sample])
    assert result["EMAIL_ADDRESS"]["tp"] == 1 and result["EMAIL_ADDRESS"]["f2"] == 1.0
    assert result["PHONE_NUMBER"]["tp"] == 1
    assert result["PERSON"]["fn"] == 1 and result["PERSON"]["recall"] == 0.0
    assert micro_average(result)["support"] == 3


def test_evaluate_pii_reports_types_without_gold() -> None:
    sample = {"full_text": "card 4111 1111 1111 1111", "spans": []}
    result = evaluate_pii([sample])
    assert result["CREDIT_CARD"]["fp"] == 1 and result["CREDIT_CARD"]["support"] == 0


def test_phonenumbers_is_imported_lazily() -> None:
    code = "import sys, keel.guardrails.pii; print('phonenumbers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- quality on the dev data --------------------------------------------------------------

CORE = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


@pytest.mark.skipif(
    not (PII_DATA / "presidio_synth_dev.json").exists(),
    reason=f"presidio-research dev set not found at {PII_DATA} (shared data folder missing)",
)
def test_quality_on_presidio_dev_set() -> None:
    samples = load_presidio(PII_DATA / "presidio_synth_dev.json")
    assert len(samples) == 750
    result = evaluate_pii(samples)
    low = {k: round(result[k]["f2"], 3) for k in CORE if result[k]["f2"] < 0.90}
    assert low == {}, f"F2 below 0.90: {low}"


def test_trace_redaction_resolves_overlaps_as_the_guard_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a span keeps (``capture = "redacted"``) and the pii guard's fix resolve
    overlapping spans the same way: the higher score wins, even when a weaker span starts
    first (the turn capture once kept whichever started first)."""
    import keel.guardrails.secrets as secrets
    from keel.guardrails.redaction import redact_text
    from keel.ops.turn_trace import AppIdentity, TurnTracer

    identity = AppIdentity("a", lambda: "m", lambda: "i", lambda v: v, lambda: {})
    _redacted = TurnTracer(None, identity, "redacted", redact_text).capture

    text = "reach me at +1 415 555 0100 please"
    phone = detect_pii(text)
    assert [s.entity_type for s in phone] == ["PHONE_NUMBER"]
    start = phone[0].start
    # a weak "secret" that starts before the phone number and overlaps it
    weak = Span("GENERIC_SECRET", start - 3, start + 4, text[start - 3 : start + 4], 0.3)
    monkeypatch.setattr(secrets, "detect_secrets", lambda text, **kw: [weak])
    assert _redacted(text) == Redactor().redact(text, [*phone, weak])
    assert _redacted(text) == "reach me at <PHONE_NUMBER_1> please"
