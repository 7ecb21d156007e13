"""Secret detection: provider keys and tokens by their documented shapes, private keys, JWTs,
passwords in URLs and assignments, and high-entropy strings.

Scores: provider shapes with a fixed prefix 0.9-1.0; assignments ``password = "..."`` 0.8;
high-entropy tokens 0.6-0.8 (higher next to words like "secret" or "token"). Known false
friends are skipped: UUIDs, hex digests labelled as hashes or commits, paths, URLs without
credentials, identifiers made of words, version strings, base64 ``data:`` URIs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

from keel.guardrails.spans import Span, resolve_overlaps

__all__ = ["SECRET_TYPES", "detect_secrets", "shannon_entropy"]

SECRET_TYPES: tuple[str, ...] = (
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "SLACK_TOKEN",
    "SLACK_WEBHOOK",
    "STRIPE_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "TWILIO_API_KEY",
    "SENDGRID_API_KEY",
    "NPM_TOKEN",
    "PYPI_TOKEN",
    "HUGGINGFACE_TOKEN",
    "JWT",
    "PRIVATE_KEY",
    "URL_PASSWORD",
    "PASSWORD",
    "GENERIC_SECRET",
    "HIGH_ENTROPY",
)


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value`` (0 for the empty string)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _span(kind: str, text: str, start: int, end: int, score: float) -> Span:
    return Span(kind, start, end, text[start:end], score)


# --------------------------------------------------------------------------------------------
# Provider shapes: (type, pattern, score). A capture group, when present, is the secret.

_B = r"(?<![A-Za-z0-9_-])"  # token start
_E = r"(?![A-Za-z0-9_-])"  # token end
_PROVIDERS: list[tuple[str, re.Pattern[str], float]] = [
    (
        "AWS_ACCESS_KEY",
        re.compile(
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)"
            r"[A-Z0-9]{16}(?![A-Za-z0-9])"
        ),
        0.95,
    ),
    (
        "AWS_SECRET_KEY",
        re.compile(
            r"(?i:aws.{0,20}?(?:secret|private).{0,20}?key|secret[_-]?access[_-]?key)"
            r"[\"']?\s*(?::=|=>|[:=])?\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        0.95,
    ),
    ("GITHUB_TOKEN", re.compile(rf"{_B}gh[pousr]_[A-Za-z0-9]{{36,251}}{_E}"), 1.0),
    ("GITHUB_TOKEN", re.compile(rf"{_B}github_pat_[A-Za-z0-9_]{{50,255}}{_E}"), 1.0),
    ("GITLAB_TOKEN", re.compile(rf"{_B}gl(?:pat|dt|rt|ptt|oas)-[A-Za-z0-9_-]{{20,64}}{_E}"), 1.0),
    ("SLACK_TOKEN", re.compile(rf"{_B}xox[abposre]-[A-Za-z0-9-]{{10,250}}{_E}"), 0.95),
    (
        "SLACK_WEBHOOK",
        re.compile(r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/+-]{20,}"),
        0.95,
    ),
    ("STRIPE_KEY", re.compile(rf"{_B}(?:sk|rk)_live_[A-Za-z0-9]{{16,247}}{_E}"), 1.0),
    ("STRIPE_KEY", re.compile(rf"{_B}(?:sk|rk)_test_[A-Za-z0-9]{{16,247}}{_E}"), 0.9),
    ("STRIPE_KEY", re.compile(rf"{_B}pk_(?:live|test)_[A-Za-z0-9]{{16,247}}{_E}"), 0.6),
    ("ANTHROPIC_API_KEY", re.compile(rf"{_B}sk-ant-[A-Za-z0-9_-]{{32,200}}{_E}"), 1.0),
    (
        "OPENAI_API_KEY",
        re.compile(rf"{_B}sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{{32,200}}{_E}"),
        1.0,
    ),
    ("OPENAI_API_KEY", re.compile(rf"{_B}sk-[A-Za-z0-9]{{20}}T3BlbkFJ[A-Za-z0-9]{{20}}{_E}"), 1.0),
    ("OPENAI_API_KEY", re.compile(rf"{_B}sk-(?!ant-)[A-Za-z0-9_-]{{32,200}}{_E}"), 0.85),
    ("GOOGLE_API_KEY", re.compile(rf"{_B}AIza[0-9A-Za-z_-]{{35}}{_E}"), 0.95),
    ("TWILIO_API_KEY", re.compile(r"(?<![A-Za-z0-9])SK[0-9a-fA-F]{32}(?![A-Za-z0-9])"), 0.9),
    (
        "SENDGRID_API_KEY",
        re.compile(rf"{_B}SG\.[A-Za-z0-9_-]{{22}}\.[A-Za-z0-9_-]{{43}}{_E}"),
        1.0,
    ),
    ("NPM_TOKEN", re.compile(rf"{_B}npm_[A-Za-z0-9]{{36}}{_E}"), 0.95),
    ("HUGGINGFACE_TOKEN", re.compile(rf"{_B}hf_[A-Za-z0-9]{{34,40}}{_E}"), 0.9),
    ("PYPI_TOKEN", re.compile(rf"{_B}pypi-[A-Za-z0-9_-]{{50,}}{_E}"), 0.95),
]
# the random part of a provider token must look random (not "ghp_" + "a" * 36)
_PREFIX = re.compile(
    r"^(?:gh[pousr]_|github_pat_|gl[a-z]+-|xox[a-z]-|[sprk]k_(?:live|test)_|sk-ant-|"
    r"sk-(?:proj|svcacct|admin|None)-|sk-|AIza|SK|SG\.|npm_|hf_|pypi-|A[A-Z]{3})"
)


def _random_enough(value: str) -> bool:
    body = _PREFIX.sub("", value)
    return len(set(body)) >= 8 and shannon_entropy(body) >= 3.0


def _providers(text: str) -> Iterator[Span]:
    for kind, regex, score in _PROVIDERS:
        for m in regex.finditer(text):
            start, end = m.span(1) if regex.groups else m.span()
            value = text[start:end]
            if kind != "SLACK_WEBHOOK" and not _random_enough(value):
                continue
            if "EXAMPLE" in value:  # AWS's documented sample keys
                score = min(score, 0.5)
            yield _span(kind, text, start, end, score)


# --------------------------------------------------------------------------------------------
# Private keys, JWTs, URL passwords

_PRIVATE_KEY = re.compile(
    r"-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,.-]*)"
)
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(eyJ[A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{2,})\.([A-Za-z0-9_-]*)"
    r"(?![A-Za-z0-9_-])"
)
_URL_PASSWORD = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:/@?#\"'<>]{1,128}:([^\s/@?#\"'<>]{1,128})@"
    r"[A-Za-z0-9.\[\]-]+"
)
_AUTH_HEADER = re.compile(
    r"(?i)\b(?:authorization|proxy-authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+"
    r"([A-Za-z0-9._~+/-]{16,}=*)"
)
_PLACEHOLDER_VALUES = frozenset(
    "password pass passwd pwd secret token apikey api_key key changeme xxx xxxx xxxxx "
    "xxxxxx xxxxxxxx none null nil true false undefined example redacted masked hidden "
    "your_password your_token your_api_key your-api-key yourpassword mypassword "
    "placeholder dummy test foo bar baz".split()
)


def _b64json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def _is_placeholder(value: str) -> bool:
    v = value.strip("\"'`[]").lower()
    return (
        v in _PLACEHOLDER_VALUES
        or v[:1] in "$<{%[("
        or set(v) <= set("*x.-_#•")
        or v.startswith(("your", "my_", "os.environ", "env(", "getenv", "process.env"))
        or "..." in v
    )


def _structured(text: str) -> Iterator[Span]:
    for m in _PRIVATE_KEY.finditer(text):
        body = re.sub(r"-----[A-Z ]+-----|[^A-Za-z0-9+/=]", "", m.group())
        if len(body) < 32:
            continue  # "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END ..." in docs
        end = m.end()
        while end > m.start() and text[end - 1].isspace():
            end -= 1
        yield _span("PRIVATE_KEY", text, m.start(), end, 1.0)
    for m in _JWT.finditer(text):
        header = _b64json(m.group(1))
        if not isinstance(header, dict) or "alg" not in header:
            continue
        if not m.group(3) and str(header.get("alg", "")).lower() != "none":
            continue
        yield _span("JWT", text, m.start(), m.end(), 0.95)
    for m in _AUTH_HEADER.finditer(text):
        if not _is_placeholder(m.group(1)):
            yield _span("GENERIC_SECRET", text, m.start(1), m.end(1), 0.9)
    for m in _URL_PASSWORD.finditer(text):
        if _is_placeholder(m.group(1)):
            continue
        yield _span("URL_PASSWORD", text, m.start(1), m.end(1), 0.9)


# --------------------------------------------------------------------------------------------
# Assignments: api_key = "...", PASSWORD: ..., "client_secret": "..."

_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])"
    r"([A-Za-z0-9_.-]{0,40}?(?:api[_.-]?key|apikey|secret|token|passwd|password|passphrase|"
    r"pwd|credentials?|access[_.-]?key|private[_.-]?key|auth[_.-]?key|client[_.-]?secret|"
    r"bearer)[A-Za-z0-9_.-]{0,20})"
    r"([\"']?)\s{0,3}(?::=|=>|==|[:=])\s{0,3}(?!=)"
    r"(?:([\"'`])((?:(?!\3)[^\n\\]|\\.){4,512})\3|([^\s\"'`,;)}\]&?#]{6,512}))"
)
_CODE_VALUE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(.*)?$")
_NOT_SECRET_KEYS = re.compile(
    r"(?i)(?:[_.-]?(?:type|count|limit|len|length|url|uri|endpoint|path|file|name|id|ids|"
    r"expiry|expires?|class|env|var|ref|arn|header|prefix|suffix|field|param|format|size|"
    r"timeout|ttl|policy|provider|mode|usage|used|budget|index|idx|pattern|regex|label))$|"
    r"tokeniz|^(?:max|min|num|n)[_.-]?tokens?|^(?:is|has|use|show|require)[_.-]"
)


def _assignments(text: str) -> Iterator[Span]:
    for m in _ASSIGNMENT.finditer(text):
        key = m.group(1)
        if _NOT_SECRET_KEYS.search(key):
            continue
        quoted = m.group(4) is not None
        group = 4 if quoted else 5
        value = m.group(group)
        if _is_placeholder(value):
            continue
        low = key.lower()
        password = any(w in low for w in ("pass", "pwd"))
        if not quoted and not _bare_value_ok(key, value):
            continue
        if not password and not _looks_random(value):
            continue  # a token/key/secret looks random: not "NextToken", not "SCX_API_KEY"
        kind = "PASSWORD" if password else "GENERIC_SECRET"
        score = 0.8 if quoted or shannon_entropy(value) >= 3.0 else 0.65
        yield _span(kind, text, m.start(group), m.end(group), score)


_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _bare_value_ok(key: str, value: str) -> bool:
    """An unquoted value: in code it is usually a name or a type (``password: Optional[str]``,
    ``token = args.token``); in .env/YAML files (``API_KEY=...``, ``password: hunter2``) it is
    the secret itself."""
    if len(value) < 6 or _FLOAT.fullmatch(value) or any(c in value for c in "()[]{}<>"):
        return False
    if key.isupper():  # API_KEY=... in a .env file
        return True
    if _DOTTED.fullmatch(value):
        return False
    if _IDENT.fullmatch(value):  # a name, unless it carries digits: hunter2, Sup3rS3cret
        return any(c.isdigit() for c in value) and "_" not in value
    return True


# --------------------------------------------------------------------------------------------
# High-entropy tokens

_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_.-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/=_-]|\.\w)")
# UUIDs with dashes; undashed ones are plain hex and need a secret-ish label like any hex
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_WORDISH = re.compile(r"[A-Z][a-z]{2,}|[a-z]{3,}|[A-Z]{3,}(?![a-z])")
_CAMEL = re.compile(r"[A-Z][a-z]+|[a-z]{3,}|[A-Z]{2,}(?![a-z])")
_VOWELS = frozenset("aeiouyAEIOUY")
_SECRET_WORDS = re.compile(
    r"(?i)(?:secret|token|api[_ -]?key|apikey|password|passwd|credential|private|auth|bearer|"
    r"access[_ -]?key|signature|session)"
)
_HASH_WORDS = re.compile(
    r"(?i)(?:sha-?(?:1|224|256|384|512)?|md5|hash|digest|checksum|commit|revision|rev|etag|"
    r"fingerprint|integrity|blake2|crc|object id|oid|git)\b"
)


def _wordiness(value: str) -> float:
    """The share of the letters in ``value`` that sit in word-like runs ("Encoder", "snap",
    "POST"). About 0.3 for random base64, above 0.8 for identifiers made of words."""
    letters = sum(c.isalpha() for c in value)
    if not letters:
        return 0.0
    covered = sum(len(w) for w in _WORDISH.findall(value) if _VOWELS.intersection(w))
    loose = sum(len(w) for w in _CAMEL.findall(value) if w.isupper() or _VOWELS.intersection(w))
    # loose runs ("No", "TFGPT") cover random text more: 0.9 of them counts as 0.75
    return max(covered, loose * 0.75 / 0.9) / letters


def _looks_random(value: str) -> bool:
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value)
    return (
        len(value) >= 8
        and (mixed or any(c.isdigit() for c in value))
        and shannon_entropy(value) >= 2.5
        and _wordiness(value) < 0.75
    )


def _classes(value: str) -> int:
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(c in "+/=_-" for c in value)
    )


def _looks_like_path(value: str) -> bool:
    """``usr/local/lib/python3``, ``Users/someone/AppData``: mostly word-like segments, none
    of them a long random run."""
    parts = [p for p in re.split(r"[/\\]", value) if p]
    if len(parts) < 2:
        return False
    wordy = [len(p) >= 3 and _wordiness(p) >= 0.75 for p in parts]
    longest_other = max((len(p) for p, w in zip(parts, wordy, strict=True) if not w), default=0)
    return sum(wordy) * 2 > len(parts) and longest_other <= 12


_PUBLIC_BLOCK = re.compile(
    r"-----BEGIN (?![A-Z0-9 ]*PRIVATE)[A-Z0-9 ]{3,40}-----[\s\S]*?"
    r"(?:-----END [A-Z0-9 ]{3,40}-----|$)"
)
_SSH_PUBLIC = re.compile(r"(?:ssh-(?:rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-ssh-\S+)\s+$")


def _entropic(text: str, min_entropy: float, urls: list[tuple[int, int]]) -> Iterator[Span]:
    public = [m.span() for m in _PUBLIC_BLOCK.finditer(text)] if "-----BEGIN" in text else []
    for m in _TOKEN.finditer(text):
        start = m.start()
        value = m.group().rstrip("=")
        if len(value) < 20:
            continue
        before = text[max(0, start - 40) : start]
        if before.rstrip().endswith("base64,") or _UUID.search(value):
            continue
        if _SSH_PUBLIC.search(before) or any(a <= start < b for a, b in public):
            continue  # public keys and certificates are meant to be shared
        if _looks_like_path(value) or "EXAMPLE" in value.upper():
            continue  # paths; documentation samples (AWS marks them EXAMPLE)
        entropy = shannon_entropy(value)
        if entropy < min_entropy:
            continue
        keyword = bool(_SECRET_WORDS.search(before))
        in_url = any(a <= start < b for a, b in urls)
        if in_url and not keyword:
            continue
        if _HEX.fullmatch(value):
            # digests and commit ids: a secret only when labelled like one
            if not keyword or _HASH_WORDS.search(before):
                continue
            yield _span("HIGH_ENTROPY", text, start, start + len(value), 0.6)
            continue
        mixed_case = any(c.islower() for c in value) and any(c.isupper() for c in value)
        parts = re.split(r"[-_/]", value)
        if len(parts) >= 3 and max(map(len, parts)) <= 10 and not keyword:
            continue  # names built from short parts: PI3K-Akt-mTORC1-S6K1, org/model-7b-hf
        if _classes(value) < 3 or not any(c.isdigit() for c in value):
            continue
        if not mixed_case and not keyword:
            continue  # snake_case / UPPER_CASE names; random tokens mix cases
        if _wordiness(value) >= 0.75:
            continue  # identifiers made of words: MyApp_Production_Config_2023
        yield _span("HIGH_ENTROPY", text, start, start + len(value), 0.8 if keyword else 0.65)


_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s<>\"']+")


def detect_secrets(text: str, *, min_entropy: float = 3.5) -> list[Span]:
    """Find secrets in ``text``: spans sorted by start, not overlapping (higher score wins,
    then the longer span). ``min_entropy`` (bits per character) is the bar for unlabelled
    high-entropy tokens; provider shapes have their own checks."""
    if not text:
        return []
    urls = [m.span() for m in _URL.finditer(text)]
    candidates: list[Span] = []
    candidates.extend(_providers(text))
    candidates.extend(_structured(text))
    candidates.extend(_assignments(text))
    candidates.extend(_entropic(text, min_entropy, urls))
    return resolve_overlaps(candidates)
