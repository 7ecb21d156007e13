"""Secret detection: provider shapes, private keys, URL passwords, JWTs, assignments and
high-entropy strings, against hard negatives.

No real-looking secret sits in this file as a literal: every value is built at run time from a
seeded random generator (a repeated character would fail the randomness checks anyway).
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import string

import pytest

from keel.guardrails.secrets import SECRET_TYPES, detect_secrets, shannon_entropy

RNG = random.Random(20240611)
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(header: dict[str, str] | None = None) -> str:
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": "1234567890", "name": "Test User"}).encode())
    return f"{head}.{body}.{b64url(RNG.randbytes(32))}"


def kinds(text: str) -> list[tuple[str, str]]:
    return [(s.entity_type, s.text) for s in detect_secrets(text)]


PROVIDERS = [
    ("AWS_ACCESS_KEY", lambda: "AKIA" + rand(16, UPPER_DIGITS)),
    ("AWS_ACCESS_KEY", lambda: "ASIA" + rand(16, UPPER_DIGITS)),
    ("GITHUB_TOKEN", lambda: "ghp_" + rand(36)),
    ("GITHUB_TOKEN", lambda: "gho_" + rand(36)),
    ("GITHUB_TOKEN", lambda: "ghs_" + rand(36)),
    ("GITHUB_TOKEN", lambda: "github_pat_" + rand(22) + "_" + rand(59)),
    ("GITLAB_TOKEN", lambda: "glpat-" + rand(20)),
    ("SLACK_TOKEN", lambda: "xoxb-" + rand(11, string.digits) + "-" + rand(24)),
    ("SLACK_TOKEN", lambda: "xoxp-" + rand(12, string.digits) + "-" + rand(32)),
    ("STRIPE_KEY", lambda: "sk_live_" + rand(24)),
    ("STRIPE_KEY", lambda: "rk_test_" + rand(24)),
    ("OPENAI_API_KEY", lambda: "sk-proj-" + rand(48) + "_" + rand(20)),
    ("OPENAI_API_KEY", lambda: "sk-" + rand(48)),
    ("ANTHROPIC_API_KEY", lambda: "sk-ant-api03-" + rand(93) + "AA"),
    ("GOOGLE_API_KEY", lambda: "AIza" + rand(35, ALNUM + "_-")),
    ("TWILIO_API_KEY", lambda: "SK" + rand(32, HEX)),
    ("SENDGRID_API_KEY", lambda: "SG." + rand(22) + "." + rand(43)),
    ("NPM_TOKEN", lambda: "npm_" + rand(36)),
    ("PYPI_TOKEN", lambda: "pypi-AgEIcHlwaS5vcmc" + rand(60, ALNUM + "_-")),
]


@pytest.mark.parametrize(("kind", "make"), PROVIDERS)
@pytest.mark.parametrize("template", ["{}", "token: {}\n", 'key="{}"', "use {} now."])
def test_provider_shapes(kind: str, make: object, template: str) -> None:
    value = make()  # type: ignore[operator]
    text = template.format(value)
    spans = detect_secrets(text)
    assert [(s.entity_type, s.text) for s in spans] == [(kind, value)]
    assert text[spans[0].start : spans[0].end] == value
    assert kind in SECRET_TYPES


def test_provider_prefix_with_filler_is_not_a_token() -> None:
    assert detect_secrets("ghp_" + "a" * 36) == []
    assert detect_secrets("AKIA" + "A" * 16) == []


def test_aws_secret_key_next_to_its_name() -> None:
    secret = rand(40, ALNUM + "/+")
    for text in (
        f"aws_secret_access_key = {secret}",
        f'AWS_SECRET_ACCESS_KEY="{secret}"',
        f'"SecretAccessKey": "{secret}"',
    ):
        assert ("AWS_SECRET_KEY", secret) in kinds(text), text


def test_private_key_blocks() -> None:
    body = "\n".join(rand(64, ALNUM + "+/") for _ in range(4))
    for label in ("RSA PRIVATE KEY", "PRIVATE KEY", "OPENSSH PRIVATE KEY", "EC PRIVATE KEY"):
        block = f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"
        text = f"here it is:\n{block}\nthanks"
        assert kinds(text) == [("PRIVATE_KEY", block)]
    # a truncated paste still counts
    truncated = f"-----BEGIN RSA PRIVATE KEY-----\n{body}"
    assert [k for k, _ in kinds(truncated)] == ["PRIVATE_KEY"]
    # documentation placeholders do not
    assert kinds("-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----") == []
    assert kinds("-----BEGIN PUBLIC KEY-----\n" + body + "\n-----END PUBLIC KEY-----") == []


def test_url_passwords() -> None:
    password = rand(14)
    text = f"DATABASE_URL=postgres://admin:{password}@db.internal:5432/app"
    assert ("URL_PASSWORD", password) in kinds(text)
    assert kinds(f"amqp://guest:{password}@rabbit/") == [("URL_PASSWORD", password)]
    # no credentials, or placeholders
    assert kinds("see https://example.com/login?next=/home and ftp://ftp.example.org/pub") == []
    assert kinds("postgres://user:password@localhost/db") == []
    assert kinds("redis://:${REDIS_PASSWORD}@cache:6379/0") == []


def test_jwt() -> None:
    token = make_jwt()
    assert kinds(f"Authorization: Bearer {token}") == [("JWT", token)]
    assert kinds(token) == [("JWT", token)]
    # three base64url parts whose header is not a JOSE header
    fake = b64url(b'{"hello": "world", "n": 1}') + "." + rand(20) + "." + rand(30)
    assert [k for k, _ in kinds(fake)] != ["JWT"]


def test_assignments() -> None:
    value = rand(32)
    assert kinds(f'api_key = "{value}"') == [("GENERIC_SECRET", value)]
    assert kinds(f"STRIPE_SECRET={value}") == [("GENERIC_SECRET", value)]
    assert kinds(f'{{"client_secret": "{value}"}}') == [("GENERIC_SECRET", value)]
    assert kinds('password = "hunter2!"') == [("PASSWORD", "hunter2!")]
    assert kinds("db_password: Sup3rS3cret") == [("PASSWORD", "Sup3rS3cret")]


@pytest.mark.parametrize(
    "text",
    [
        'password = os.environ["DB_PASSWORD"]',
        "password: Optional[str] = None",
        "token = get_token(request)",
        "max_tokens = 1024",
        'token_type = "bearer"',
        "password_min_length: 12",
        'api_key = "your_api_key_here"',
        'secret = "${SECRET}"',
        'output_token = "NextToken"',
        'api_key_env = "OPENAI_API_KEY"',
        "self.password = password",
    ],
)
def test_assignment_negatives(text: str) -> None:
    assert detect_secrets(text) == []


def test_high_entropy_strings() -> None:
    token = rand(40, ALNUM + "+/")
    assert kinds(f"the value was {token} yesterday") == [("HIGH_ENTROPY", token)]
    labelled = rand(32, ALNUM + "_-")
    spans = detect_secrets(f"session cookie: {labelled}")
    assert [(s.entity_type, s.text) for s in spans] == [("HIGH_ENTROPY", labelled)]
    assert spans[0].score >= 0.8  # a secret-ish word nearby raises the score
    # a hex string is a secret only when labelled as one (and not as a hash)
    hex_value = rand(40, HEX)
    assert kinds(f"deploy token {hex_value}") == [("HIGH_ENTROPY", hex_value)]
    assert kinds(f"commit {hex_value}") == []


def test_min_entropy_threshold() -> None:
    token = rand(24, ALNUM)
    assert detect_secrets(token, min_entropy=3.5)
    assert detect_secrets(token, min_entropy=shannon_entropy(token) + 0.01) == []


@pytest.mark.parametrize(
    "text",
    [
        "request id 123e4567-e89b-12d3-a456-426614174000 failed",
        "uuid: 550E8400E29B41D4A716446655440000",
        "sha256: " + "".join(RNG.choice(HEX) for _ in range(64)),
        "SHA-256 digest of report.pdf is " + "".join(RNG.choice(HEX) for _ in range(64)),
        "git commit " + "".join(RNG.choice(HEX) for _ in range(40)),
        "Pneumonoultramicroscopicsilicovolcanoconiosis and internationalization are long words.",
        "The quick brown fox jumps over the lazy dog; nothing secret here at all, promise.",
        "/usr/local/lib/python3.11/site-packages/keel/guardrails/secrets.py",
        "C:\\Users\\someone\\AppData\\Local\\Programs\\Python\\Python311\\python.exe",
        "https://example.com/articles/2023/how-to-write-good-code?utm_source=newsletter_2023",
        "version 1.2.3-beta.4+build.5678 and v2.10.0-rc1 and 10.0.19045.3693",
        "MyApp_Production_Config_Value_2023 and some_long_function_name_v2 and TFGPT2ModelNoPast",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
        "ISBN 978-3-16-148410-0 and DOI 10.1000/xyz123",
    ],
)
def test_hard_negatives(text: str) -> None:
    assert detect_secrets(text) == []


def test_spans_sorted_non_overlapping_with_exact_offsets() -> None:
    gh = "ghp_" + rand(36)
    aws = "AKIA" + rand(16, UPPER_DIGITS)
    text = f'GITHUB_TOKEN="{gh}"\naws_access_key_id = {aws}\npassword = "correct horse"\n'
    spans = detect_secrets(text)
    assert [s.entity_type for s in spans] == ["GITHUB_TOKEN", "AWS_ACCESS_KEY", "PASSWORD"]
    for a, b in itertools.pairwise(spans):
        assert a.end <= b.start
    for s in spans:
        assert text[s.start : s.end] == s.text
    assert detect_secrets("") == []
