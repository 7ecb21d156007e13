"""PII detection by patterns, validation rules and light heuristics, and consistent redaction.

Nothing here is a language model. The detectors fall in three bands, and their scores say so:

* validated (0.85-1.0): ``EMAIL_ADDRESS``, ``CREDIT_CARD`` (Luhn + issuer prefix + length),
  ``IBAN_CODE`` (per-country length + mod-97), ``US_SSN`` (area/group/serial rules),
  ``IP_ADDRESS`` (octets / :mod:`ipaddress`), ``PHONE_NUMBER`` in international or North
  American form (checked with ``phonenumbers``);
* pattern + context (0.6-0.85): other phone formats next to words like "phone"/"fax",
  ``US_DRIVER_LICENSE`` and ``ZIP_CODE`` after their keywords, ``DATE_TIME``, ``AGE``,
  ``DOMAIN_NAME``, ``STREET_ADDRESS`` (house number + street name + street type, P.O. and
  military boxes);
* heuristics (0.5-0.8): ``PERSON`` (titles, "my name is", common given names from a bundled
  list), ``ORGANIZATION`` (legal suffixes), ``LOCATION`` (countries and US states), ``NRP``
  (nationalities, religions). They miss names they have never seen and unusual addresses.

:func:`detect_pii` returns non-overlapping spans sorted by start; overlaps are resolved by score,
then length. :class:`Redactor` replaces spans with numbered placeholders that stay the same for
the same value across the turns of a conversation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

from keel.guardrails.spans import Span, resolve_overlaps

__all__ = ["ENTITY_TYPES", "Redactor", "detect_pii"]

ENTITY_TYPES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "US_DRIVER_LICENSE",
    "DATE_TIME",
    "AGE",
    "ZIP_CODE",
    "DOMAIN_NAME",
    "STREET_ADDRESS",
    "PERSON",
    "ORGANIZATION",
    "LOCATION",
    "NRP",
)

# --------------------------------------------------------------------------------------------
# Shared pieces

_UPPER = "".join(ch for ch in map(chr, range(0x41, 0x530)) if ch.isupper() and ch.isalpha())
_UP = "[" + re.escape(_UPPER) + "]"
_LETTER = r"[^\W\d_]"
# a capitalised word: "Anna", "McCray", "O'Brien", "Garcia-Smith", "Šimůnek"
_CAPWORD = rf"{_UP}{_LETTER}*(?:['’-]{_LETTER}+)*"


def _window(text: str, start: int, end: int, before: int, after: int = 0) -> tuple[str, str]:
    return text[max(0, start - before) : start].lower(), text[end : end + after].lower()


def _span(kind: str, text: str, start: int, end: int, score: float) -> Span:
    return Span(kind, start, end, text[start:end], round(min(max(score, 0.0), 1.0), 3))


# --------------------------------------------------------------------------------------------
# EMAIL_ADDRESS

_EMAIL = re.compile(
    r"(?<![\w.%+'-])"
    r"[A-Za-z0-9_%+-]+(?:[.'][A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w-]|\.[A-Za-z0-9])"
)


def _emails(text: str, urls: list[tuple[int, int]]) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        if _inside(m.start(), urls) and text[m.start() - 1 : m.start()] == ":":
            continue  # the password part of scheme://user:pass@host
        yield _span("EMAIL_ADDRESS", text, m.start(), m.end(), 1.0)


# --------------------------------------------------------------------------------------------
# URLs and DOMAIN_NAME

_CC_TLDS = (
    "ac ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bm bn bo br "
    "bs bt bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz "
    "ec ee eg er es et eu fi fj fk fm fo fr ga gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw "
    "gy hk hm hn hr ht hu id ie il im in io iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw "
    "ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mg mh mk ml mm mn mo mp mq mr ms mt mu "
    "mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt "
    "pw py qa re ro rs ru rw sa sb sc sd se sg sh si sk sl sm sn so sr ss st su sv sx sy sz tc "
    "td tf tg th tj tk tl tm tn to tr tt tv tw tz ua ug uk us uy uz va vc ve vg vi vn vu wf ws "
    "ye yt za zm zw"
)
_G_TLDS = (
    "com net org edu gov mil int info biz name pro aero coop museum mobi asia tel travel jobs "
    "app dev xyz online site tech store blog shop cloud page wiki news live life world today "
    "email link club top icu vip website space fun digital agency media network solutions "
    "company services group studio design global systems software academy bank health law"
)
_TLDS = frozenset((_CC_TLDS + " " + _G_TLDS).split())
# TLDs that are also units: "mmol.min-1.kg"
_UNIT_TLDS = frozenset("kg mg cm mm km ml hr gy sv ms".split())
# TLDs that are also common file extensions or words: "setup.py", "notes.md", "go.to"
_AMBIGUOUS_TLDS = frozenset(
    "py sh md pl rs so ps pm ml mk cc in it is at me do to am as be sc cs sx ai io zip mov "
    "no my us so gg".split()
)
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
_URL = re.compile(
    r"\b(?:https?|ftp|wss?)://(?:[^\s/@<>\"']+@)?(" + _HOST + r")(?::\d{1,5})?"
    r"(?:[/?#][^\s<>\"']*)?",
    re.IGNORECASE,
)
_DOMAIN = re.compile(r"(?<![\w@.:/-])(" + _HOST + r")(?![\w-]|\.[A-Za-z0-9]|@)")


def _urls(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _URL.finditer(text)]


def _inside(pos: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in ranges)


def _tld_ok(host: str) -> bool:
    tld = host.rsplit(".", 1)[-1]
    return (tld.islower() or tld.isupper()) and tld.lower() in _TLDS


def _domains(text: str) -> Iterator[Span]:
    seen: set[int] = set()
    for m in _URL.finditer(text):
        host_start, host_end = m.span(1)
        if _tld_ok(m.group(1)):
            seen.add(host_start)
            yield _span("DOMAIN_NAME", text, host_start, host_end, 0.85)
    for m in _DOMAIN.finditer(text):
        host = m.group(1)
        if m.start() in seen or not _tld_ok(host):
            continue
        labels = host.split(".")
        if any(label.isdigit() for label in labels):
            continue
        tld = labels[-1].lower()
        www = labels[0].lower() == "www"
        if not www and (tld in _UNIT_TLDS or (len(labels) == 2 and tld in _AMBIGUOUS_TLDS)):
            continue
        if not www and labels[0][:1].isupper() and labels[-1][:1].isupper():
            continue  # "End.It" - two sentences without a space
        yield _span("DOMAIN_NAME", text, m.start(), m.end(), 0.85 if www else 0.6)


# --------------------------------------------------------------------------------------------
# CREDIT_CARD

_CARD = re.compile(r"(?<![\w.,/-])\d(?:[ -]?\d){11,18}(?![\w/]|[.,-]\d)")
_CARD_CONTEXT = re.compile(
    r"\b(?:card|cc|credit|debit|visa|mastercard|amex|maestro|discover|jcb|diners|pan)\b"
)
_CARD_NEG = re.compile(r"\b(?:order|invoice|tracking|account|acct|ref|reference|isbn|serial)\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_brand(d: str) -> tuple[str, bool] | None:
    """The card scheme for the digits and whether the length is usual for it (else None)."""
    n = len(d)
    p2, p3, p4, p6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":
        return ("visa", n in (13, 16, 19))
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return ("mastercard", n == 16)
    if p2 in (34, 37):
        return ("amex", n == 15)
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:
        return ("discover", 16 <= n <= 19)
    if 3528 <= p4 <= 3589:
        return ("jcb", 16 <= n <= 19)
    if p4 in (1800, 2131):
        return ("jcb", n == 15)
    if 300 <= p3 <= 305 or p3 == 309 or p2 in (36, 38, 39):
        return ("diners", 14 <= n <= 19)
    if 2200 <= p4 <= 2204:
        return ("mir", 16 <= n <= 19)
    if p2 == 62:
        return ("unionpay", 16 <= n <= 19)
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763) or p2 in (50, 56, 57, 58):
        return ("maestro", 12 <= n <= 19)
    if p2 in (60, 81, 82) or p3 == 508:
        return ("rupay", n == 16)
    return None


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        raw = m.group()
        seps = set(re.findall(r"[ -]", raw))
        if len(seps) > 1:
            continue
        if seps and raw.count(next(iter(seps))) > 4:
            continue  # at most five digit groups
        digits = re.sub(r"\D", "", raw)
        if not 12 <= len(digits) <= 19 or not _luhn(digits) or len(set(digits)) < 2:
            continue
        before, _ = _window(text, m.start(), m.end(), 40)
        context = bool(_CARD_CONTEXT.search(before))
        brand = _card_brand(digits)
        if brand is None or not brand[1]:
            # an issuer range or length we do not know: only right next to "card"
            if context and len(digits) >= 13:
                yield _span("CREDIT_CARD", text, m.start(), m.end(), 0.7)
            continue
        if len(digits) == 12 and not context:
            continue  # 12-digit Maestro numbers look like anything else
        score = 0.95 if context or len(digits) >= 15 else 0.85
        if not context and _CARD_NEG.search(before[-25:]):
            score -= 0.5
        yield _span("CREDIT_CARD", text, m.start(), m.end(), score)


# --------------------------------------------------------------------------------------------
# IBAN_CODE

_IBAN_LENGTHS: dict[str, int] = {
    cc: int(n)
    for cc, n in (
        item.split(":")
        for item in (
            "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BI:27 BR:29 BY:28 CH:21 "
            "CR:22 CY:28 CZ:24 DE:22 DJ:27 DK:18 DO:28 EE:20 EG:29 ES:24 FI:18 FK:18 FO:18 "
            "FR:27 GB:22 GE:22 GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 IE:22 IL:23 IQ:23 IS:26 "
            "IT:27 JO:30 KW:30 KZ:20 LB:28 LC:32 LI:21 LT:20 LU:20 LV:21 LY:25 MC:27 MD:24 "
            "ME:22 MK:19 MN:20 MR:27 MT:31 MU:30 NI:28 NL:18 NO:15 OM:23 PK:24 PL:28 PS:29 "
            "PT:25 QA:29 RO:24 RS:22 RU:33 SA:24 SC:31 SD:18 SE:24 SI:19 SK:24 SM:27 SO:23 "
            "ST:25 SV:28 TL:23 TN:24 TR:26 UA:29 VA:22 VG:24 XK:20 YE:30 "
            # registered by national banks, not yet in the SWIFT registry
            "AO:25 BF:28 BJ:28 CF:27 CG:27 CI:28 CM:27 CV:25 DZ:26 GA:27 GQ:27 GW:25 HN:28 "
            "IR:26 KM:27 MA:28 MG:27 ML:28 MZ:25 NE:28 SN:28 TD:27 TG:28"
        ).split()
    )
}
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})(?=[ ]?[A-Za-z0-9])")
_IBAN_CONTEXT = re.compile(r"\b(?:iban|account|bank|transfer|wire|sepa|bic|swift)\b")


def _iban_ok(compact: str) -> bool:
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN_START.finditer(text):
        country = m.group(1).upper()
        length = _IBAN_LENGTHS.get(country)
        if length is None:
            continue
        if not (m.group(1).isupper() or m.group(1).islower()):
            continue
        # walk the BBAN: alphanumerics, optionally in groups separated by single spaces
        pos, count, chars = m.end(), 4, [country, m.group(2)]
        while count < length and pos < len(text):
            ch = text[pos]
            if ch.isascii() and ch.isalnum():
                chars.append(ch.upper())
                count += 1
                pos += 1
            elif ch == " " and pos + 1 < len(text) and text[pos + 1].isalnum():
                pos += 1
            else:
                break
        if count != length or (pos < len(text) and text[pos].isalnum()):
            continue
        compact = "".join(chars)
        if not compact[4:].isalnum() or not _iban_ok(compact):
            continue
        before, _ = _window(text, m.start(), pos, 40)
        score = 1.0 if _IBAN_CONTEXT.search(before) else 0.95
        yield _span("IBAN_CODE", text, m.start(), pos, score)


# --------------------------------------------------------------------------------------------
# US_SSN

_SSN = re.compile(r"(?<![\w.-])(\d{3})([- .])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(?<![\w.-])(\d{3})(\d{2})(\d{4})(?![\w-]|\.\d)")
_SSN_CONTEXT = re.compile(r"\b(?:ssn|ssns|social security|social sec|ss#|ss no|tin|taxpayer)\b")


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    a = int(area)
    if a == 0 or a == 666 or a >= 900 or group == "00" or serial == "0000":
        return False
    return area + group + serial not in {"123456789", "078051120", "219099999"}


def _ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        if not _ssn_valid(m.group(1), m.group(3), m.group(4)):
            continue
        before, _ = _window(text, m.start(), m.end(), 50)
        context = bool(_SSN_CONTEXT.search(before))
        # dashes are the usual form; spaces or dots need "SSN" nearby
        dashed = m.group(2) == "-"
        score = (1.0 if context else 0.85) if dashed else (0.9 if context else 0.4)
        yield _span("US_SSN", text, m.start(), m.end(), score)
    for m in _SSN_BARE.finditer(text):
        before, _ = _window(text, m.start(), m.end(), 40)
        if _SSN_CONTEXT.search(before) and _ssn_valid(m.group(1), m.group(2), m.group(3)):
            yield _span("US_SSN", text, m.start(), m.end(), 0.8)


# --------------------------------------------------------------------------------------------
# IP_ADDRESS

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_VERSION_WORDS = re.compile(
    r"\b(?:version|ver|v|release|rel|build|firmware|fw|rev|revision|update|patch|"
    r"oid|snmp|section|chapter|figure|fig|table|step|item|clause|rule|no|ec|isbn|doi)"
    r"\.?\s*[:#]?\s*$"
)


def _ips(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        before, _ = _window(text, m.start(), m.end(), 25)
        if _VERSION_WORDS.search(before):
            continue
        yield _span("IP_ADDRESS", text, m.start(), m.end(), 0.95)
    for m in _IPV6.finditer(text):
        cand = m.group()
        if cand.count(":") < 2 or ("::" not in cand and cand.count(":") < 7):
            continue
        if cand in ("::",) or cand.strip(":") == "":
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield _span("IP_ADDRESS", text, m.start(), m.end(), 0.95)


# --------------------------------------------------------------------------------------------
# PHONE_NUMBER

_PHONE = re.compile(
    r"(?<![\w+/.-])"
    r"(?:(?:\+|\b00)\d{1,3}[ \t.-]?)?"
    r"(?:\(\d{1,5}\)[ \t.-]?)?"
    r"\d{1,12}(?:(?:[ \t]?[.-][ \t]?|[ \t])\d{1,8}){0,6}"
    r"(?:[ \t]?(?:x|ext\.?|extension|\#)[ \t]?\d{1,6})?"
    r"(?![\w/]|[.,:-]\d)"
)
_PHONE_EXT = re.compile(r"[ \t]?(?:x|ext\.?|extension|\#)[ \t]?\d{1,6}$")
_NANP = re.compile(r"(?:\+?1[ .-]?|001[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_NANP_BARE = re.compile(r"1?\d{10}")
_DATE_SHAPE = re.compile(
    r"(?:\d{4}([-./ ])\d{1,2}\1\d{1,2}|\d{1,2}([-./ ])\d{1,2}\2(?:\d{4}|\d{2}))"
)
_SSN_SHAPE = re.compile(r"\d{3}([- .])\d{2}\1\d{4}")
_PHONE_WORDS = re.compile(
    r"\b(?:phone|phones|telephone|tel|mobile|cellphone|cell[ \t]?phone|fax|call|called|"
    r"calling|dial|sms|whatsapp|text[ \t]+(?:me|us|him|her)|landline|hotline|helpline|"
    r"answering|messages|voicemail)\b"
    # words that say "phone" only right before the number: "Office: 0123 456"
    r"|\b(?:ph|mob|cell|office|desk|home|work|contact|reach(?:[ \t]+(?:me|us|him|her))?)\.?"
    r"[ \t]*(?:[:#]|no\.?|number|at|on|via)?[ \t]*$"
)
_PHONE_AFTER = re.compile(r"^\W{0,3}(?:office|fax|mobile|cell|home|work|desk|phone|tel)\b")
_NOT_PHONE_WORDS = re.compile(
    r"\b(?:order|invoice|inv|ticket|ref|reference|tracking|account|acct|iban|card|cc|ssn|"
    r"sku|serial|model|part|isbn|po|case|id|code|pin|otp|zip|postcode|postal|license|"
    r"licence|passport|version|build|amount|total|price|usd|eur|population|km|kg)\b"
)
_PHONE_REGIONS = (
    "US", "GB", "DE", "FR", "IN", "AU", "IL", "IT", "ES", "NL", "BR", "SE", "CH", "PL", "JP",
    "MX",
)  # fmt: skip


@cache
def _phonenumbers() -> Any:
    import phonenumbers  # heavy (about 15 ms): imported on first use

    return phonenumbers


def _phone_context(text: str, start: int, end: int) -> int:
    """+1 for phone words nearby, -1 for words that say the digits are something else."""
    before, after = _window(text, start, end, 40, 15)
    closest, sign = -1, 0
    for regex, value in ((_PHONE_WORDS, 1), (_NOT_PHONE_WORDS, -1)):
        for m in regex.finditer(before):
            if m.end() > closest:
                closest, sign = m.end(), value
    if sign:
        return sign
    return 1 if _PHONE_AFTER.search(after) else 0


@lru_cache(maxsize=4096)
def _phone_score(core: str, context: int) -> float:
    pn = _phonenumbers()
    digits = re.sub(r"\D", "", core)
    intl = core.startswith("+") or core.startswith("00")
    if intl:
        number = "+" + (digits[2:] if core.startswith("00") else digits)
        try:
            parsed = pn.parse(number, None)
        except pn.NumberParseException:
            return 0.0
        if pn.is_valid_number(parsed):
            score = 0.9
        elif pn.is_possible_number(parsed):
            score = 0.75
        else:
            score = 0.45
        return score + 0.1 * context
    separated = digits != core
    if _NANP.fullmatch(core) or (not separated and _NANP_BARE.fullmatch(core)):
        try:
            parsed = pn.parse(core, "US")
            valid = pn.is_valid_number(parsed)
        except pn.NumberParseException:
            valid = False
        score = (0.8 if valid else 0.55) if separated else 0.4
        return score + 0.3 * context
    if context <= 0 and not separated:
        return 0.0
    for region in _PHONE_REGIONS:
        try:
            parsed = pn.parse(core, region)
        except pn.NumberParseException:
            continue
        if pn.is_valid_number(parsed):
            # "0151 123 4567", "06 12 34 56 78": the trunk prefix 0 and digit groups are how
            # most countries write national numbers; quantities and ids rarely look like that
            national = separated and core[0] == "0" and 9 <= len(digits) <= 12
            score = 0.55 if national else 0.45 if separated else 0.3
            break
    else:
        score = 0.3 if separated else 0.2
    return score + 0.3 * context


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        raw = m.group()
        ext = _PHONE_EXT.search(raw)
        core = raw[: ext.start()] if ext else raw
        digits = sum(ch.isdigit() for ch in core)
        if not 7 <= digits <= 15:
            continue
        context = _phone_context(text, m.start(), m.end())
        if context <= 0 and (_DATE_SHAPE.fullmatch(core) or _SSN_SHAPE.fullmatch(core)):
            continue
        score = _phone_score(core, context)
        if score >= 0.2:
            yield _span("PHONE_NUMBER", text, m.start(), m.end(), min(score, 0.95))


# --------------------------------------------------------------------------------------------
# US_DRIVER_LICENSE, ZIP_CODE

_DL = re.compile(
    r"(?i:\b(?:driver'?s?|drivers|driving)[ \t]+licen[cs]e|\bDL)"
    r"(?i:[ \t]*(?:number|num|no\.?|\#|id))?(?i:[ \t]*(?:is|:|=))?[ \t]*"
    r"(?=[A-Z0-9-]*\d)([A-Z0-9](?:[A-Z0-9-]{3,17})[A-Z0-9])\b"
)
_US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR GU VI AS MP AA AE AP"
)
_ZIP_AFTER_STATE = re.compile(
    r"(?:,[ \t]*|\b)(?:" + "|".join(_US_STATES.split()) + r")\.?[ \t]+(\d{5}(?:-\d{4})?)\b"
)
_ZIP_CONTEXT = re.compile(
    r"(?i:\b(?:zip|zip[ \t]?code|postal[ \t]?code|post[ \t]?code|postcode)\b)"
    r"(?i:[ \t]+(?:is|was|=))?[ \t]*[:#]?[ \t]*"
    r"(\d{3,6}(?:[ -]\d{2,4})?(?:[ \t][A-Z]{2}\b)?|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}|"
    r"[A-Z]\d[A-Z][ \t]?\d[A-Z]\d)\b"
)


def _licenses(text: str) -> Iterator[Span]:
    for m in _DL.finditer(text):
        value = m.group(1)
        if sum(ch.isdigit() for ch in value) < 4:
            continue
        yield _span("US_DRIVER_LICENSE", text, m.start(1), m.end(1), 0.8)


def _zips(text: str) -> Iterator[Span]:
    for m in _ZIP_CONTEXT.finditer(text):
        yield _span("ZIP_CODE", text, m.start(1), m.end(1), 0.8)
    for m in _ZIP_AFTER_STATE.finditer(text):
        yield _span("ZIP_CODE", text, m.start(1), m.end(1), 0.6)


# --------------------------------------------------------------------------------------------
# DATE_TIME

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DAYS = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)s?"
_TIME = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?"
_TZ = r"(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d|[ \t]?(?:UTC|GMT|[ECMP][SD]T))?"
_AMPM = r"(?:[ \t]?(?i:[ap]\.?m\.?)(?![\w]))"
_ORD = r"(?:st|nd|rd|th)?"
_DATES: list[tuple[re.Pattern[str], float]] = [  # (pattern, score)
    (
        re.compile(
            rf"(?<![\w.-])\d{{4}}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
            rf"(?:(?:[T ]|[ \t]at[ \t]){_TIME}{_TZ})?(?![\w-])"
        ),
        0.95,
    ),
    (
        re.compile(
            r"(?<![\w./-])(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|\d{4}/\d{1,2}/\d{1,2})"
            rf"(?:[ \t,]+(?:at[ \t])?{_TIME}{_AMPM}?)?(?![\w/-]|\.\d)"
        ),
        0.85,
    ),
    (
        re.compile(
            rf"\b(?:{_DAYS},?[ \t]+)?{_MONTHS}[ \t]+\d{{1,2}}{_ORD}(?:,?[ \t]+\d{{4}})?\b"
            rf"|\b(?:{_DAYS},?[ \t]+)?(?:the[ \t]+)?\d{{1,2}}{_ORD}[ \t]+(?:of[ \t]+)?{_MONTHS}"
            rf"(?:,?[ \t]+\d{{4}})?\b"
            rf"|\b{_MONTHS}[ \t]+\d{{4}}\b"
        ),
        0.85,
    ),
    (re.compile(rf"\b{_DAYS}\b(?:[ \t]+(?:morning|afternoon|evening|night))?"), 0.6),
    (re.compile(rf"(?<![\w:.]){_TIME}{_AMPM}?{_TZ}(?![\w:])"), 0.6),
    (re.compile(rf"\b(?:1[0-2]|0?[1-9]){_AMPM}"), 0.6),
    (
        re.compile(
            r"(?i:\b(?:in|since|during|until|till|before|after|from|of|by|around|circa|year|"
            r"born|founded|established))[ \t]+((?:1[89]|20)\d{2})\b(?![.,]\d|[-/])"
        ),
        0.6,
    ),
]


def _date_valid(value: str) -> bool:
    nums = [int(x) for x in re.findall(r"\d+", value)[:3]]
    if len(nums) < 3:
        return True
    a, b, c = nums
    if a > 31:  # y/m/d
        return 1 <= b <= 12 and 1 <= c <= 31
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def _dates(text: str) -> Iterator[Span]:
    numeric = _DATES[1][0]  # 12/31/2020, 31.12.20: check the day and month
    for regex, score in _DATES:
        for m in regex.finditer(text):
            start, end = m.span(1) if regex.groups else m.span()
            if regex is numeric and not _date_valid(m.group()):
                continue
            yield _span("DATE_TIME", text, start, end, score)


# --------------------------------------------------------------------------------------------
# AGE

_AGES = [
    re.compile(
        r"\b(\d{1,3})(?:[ \t-]+|-)(?:years?|yrs?|yr)(?:[ \t-]+|-)old\b"
        r"|\b(\d{1,3})[ \t]?(?:y/o|yo)\b"
    ),
    re.compile(
        r"(?i:\b(?:aged|age(?:[ \t]+of)?|age:|turn(?:s|ed|ing)?)[ \t]+)(\d{1,3})\b"
        r"(?![.,·]\d|[ \t]*(?:%|percent|degrees|°|times|minutes|hours|days|weeks|months|pages|"
        r"dollars|euros|km|miles|points|th\b|st\b|nd\b|rd\b))"
    ),
]


def _ages(text: str) -> Iterator[Span]:
    for regex in _AGES:
        for m in regex.finditer(text):
            group = 1 if m.group(1) is not None else 2
            value = int(m.group(group))
            if 0 < value <= 125:
                yield _span("AGE", text, m.start(group), m.end(group), 0.75)


# --------------------------------------------------------------------------------------------
# STREET_ADDRESS

_SUFFIXES = (
    "Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|"
    "Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Alley|Crescent|Cres|"
    "Close|Row|Plaza|Grove|Gardens|Mews|Crossing|Expressway|Expy|Freeway|Fwy|Loop|Pike|"
    "Turnpike|Causeway|Path|Walk|Wharf|Quay|Esplanade|Parade|Promenade|Embankment"
)
_STREET_WORDS_PRE = (
    "Rue|Avenue|Av|Avenida|Avda|Via|Viale|Vicolo|Corso|Piazza|Piazzale|Largo|Calle|Carrer|"
    "Camino|Paseo|Plaza|Rua|Travessa|Praça|Estrada|Alameda|Chemin|Boulevard|Allée|Impasse|"
    "Quai|Place|Route|Ulica|ul|Trg|Aleja|Strada|Str|Calea|Bulevardul|Odos"
)
_STREET_ENDINGS = (
    "straat|strasse|straße|str\\.|gasse|weg|allee|platz|damm|ufer|steig|gatan|gata|vägen|"
    "väg|vej|gade|veien|vegen|katu|tie|kuja|polku|laan|plein|kade|dreef|singel|utca|út|"
    "körút|tér|sokak|caddesi|bulvarı"
)
_NUM = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"
_SWORD = rf"(?:{_CAPWORD}|\d{{1,3}}(?:st|nd|rd|th)|[NSEW]\.?)"
_UNIT = (
    r"(?:,?[ \t]*\n?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg|Building)"
    r"\.?[ \t]*\#?[ \t]*[A-Za-z]?\d{1,5}[A-Za-z]?|,?[ \t]*\#[ \t]?\d{1,5}[A-Za-z]?)"
)
_CITY_LINE = (
    rf"(?:,?[ \t]*\n?[ \t]*{_CAPWORD}(?:[ \t]+{_CAPWORD}){{0,3}},?[ \t]+"
    rf"(?:{'|'.join(_US_STATES.split())})[ \t]+\d{{5}}(?:-\d{{4}})?\b)"
)
_ADDRESSES: list[tuple[re.Pattern[str], float]] = [
    (  # 123 Main Street, Apt 4, Springfield, IL 62704
        re.compile(
            rf"(?<![\w.,-]){_NUM}[ \t]+(?:{_SWORD}[ \t]+){{0,4}}{_SWORD}[ \t]+(?:{_SUFFIXES})\b\.?"
            rf"(?:[ \t]+[NSEW]{{1,2}}\b)?{_UNIT}?{_CITY_LINE}?"
        ),
        0.8,
    ),
    (  # Rue de Rivoli 12 / Via Roma, 5 / ul. Słowicza 10
        re.compile(
            rf"\b(?:{_STREET_WORDS_PRE})\.?[ \t]+"
            rf"(?:(?:de|del|della|delle|dei|degli|da|do|dos|das|di|la|le|les|des|du|van|von|"
            rf"der|den|el|los|las|São|San|Santa|Saint|St\.?)[ \t]+)*"
            rf"{_CAPWORD}(?:[ \t]+(?:{_CAPWORD}|de|del|da|do|di|la|le|des|du|dei)){{0,3}},?[ \t]+"
            rf"{_NUM}\b{_UNIT}?"
        ),
        0.7,
    ),
    (  # Hauptstraße 5 / Drottninggatan 12 / Mannerheimintie 3
        re.compile(
            rf"(?<![\w-])(?:{_CAPWORD}[ \t-])?{_UP}{_LETTER}{{2,}}(?:{_STREET_ENDINGS})"
            rf"[ \t]+{_NUM}\b{_UNIT}?",
        ),
        0.7,
    ),
    (  # 12 rue de Rivoli / 5 Via Roma
        re.compile(
            rf"(?<![\w.,-]){_NUM},?[ \t]+(?i:{_STREET_WORDS_PRE})\.?[ \t]+"
            rf"(?:(?:de|del|della|dei|da|do|dos|di|la|le|les|des|du)[ \t]+)*"
            rf"{_CAPWORD}(?:[ \t]+{_CAPWORD}){{0,3}}{_UNIT}?"
        ),
        0.7,
    ),
    (  # P.O. Box 123 / PSC 1234, Box 5678 / Unit 1234 Box 5678, APO AE 09123
        re.compile(
            r"\b(?:(?i:P\.?[ \t]?O\.?[ \t]?Box|Post[ \t]+Office[ \t]+Box|Postfach|Apartado|"
            r"Casilla|Boîte[ \t]+postale)[ \t]+\d{1,6}"
            r"|(?:PSC|Unit|CMR)[ \t]+\d{3,5},?[ \t]+Box[ \t]+\d{1,5})"
            r"(?:,?[ \t]*\n?[ \t]*(?:[AF]PO|DPO)[ \t]+A[AEP][ \t]+\d{5})?"
        ),
        0.75,
    ),
    (  # Apt. 5 / Suite 210 on their own: joined to the address pieces around them
        re.compile(r"\b(?:Apt|Apartment|Suite|Ste)\.?[ \t]*\#?[ \t]*[A-Za-z]?\d{1,5}[A-Za-z]?\b"),
        0.5,
    ),
    (  # after an address cue: "my address is trg revolucije 17", "located at Allika 46"
        re.compile(
            r"(?i:\baddress(?:es)?\b(?:[ \t]+is)?[ \t]*:?|\b(?:located|lives?|lived|living|"
            r"stay(?:ing)?|meet(?:[ \t]+(?:me|you|us))?|moved|ship(?:ped)?|deliver(?:ed)?|"
            r"sen[dt](?:[ \t]+(?:it|them|this|that|a[ \t]+new[ \t]+one))?|arrived|mail(?:ed)?)"
            r"[ \t]+(?:at|to|in)\b)[ \t]*\n?[ \t]*"  # "shipped on" starts a date
            r"(?!(?i:the|a|an|my|your|our|his|her|their|this|that|for|about|least|most|"
            r"home|work|once|first|last|next|is|of|to|in|at|on|and|or|it|we|i|be|was)\b)"
            r"((?:\d{1,6}[A-Za-z]?[ \t]+)?(?:(?:[^\W\d_]{1,3}\.|[^\W\d_][\w'’-]*)[ \t]+){1,4}"
            r"\d{1,5}[A-Za-z]?\b)"
        ),
        0.6,
    ),
]


# --------------------------------------------------------------------------------------------
# PERSON, ORGANIZATION, LOCATION, NRP

# A few hundred common given names across cultures. Names that are also everyday words or
# places ("Will", "May", "Georgia") are in _AMBIGUOUS_NAMES and need a surname or a cue.
_GIVEN_NAMES = frozenset(
    """
    Aaron Abdul Abdullah Abigail Adam Adrian Agnes Ahmed Aisha Akira Alan Albert Alberto
    Alejandro Aleksandr Alessandro Alex Alexander Alexandra Alexei Alfred Ali Alice Alicia
    Alina Alma Amanda Amelia Amir Amy Ana Anders Andrea Andreas Andrei Andrew Andrzej Angela
    Angelo Anita Ankit Ann Anna Anne Annika Anthony Antoine Antonio Anton Antonia Arjun Arnaud
    Arthur Astrid Ava Axel Ayumi Barbara Beatriz Ben Benjamin Bernard Bettina Birgit Bjorn
    Björn Boris Brandon Brenda Brian Bruno Camille Carl Carla Carlos Carmen Carol Caroline
    Catherine Cecilia Charles Charlotte Chen Chloe Christina Christine Christopher Claire
    Clara Claudia Colin Cristina Daniel Daniela Danielle Daniele David Deborah Deepak Denis
    Dennis Diana Diego Dieter Dimitri Dmitri Dmitry Donald Dorothy Dylan Edward Elena Eleanor
    Elias Elif Elin Elisa Elizabeth Ella Ellen Elsa Emil Emilie Emily Emma Emilia Enrique Eric
    Erik Erika Ernst Esther Ethan Eva Eve Fabian Fatima Felix Fernando Filip Fiona Florian
    Francesca Francesco Francisco Franz Freya Gabriel Gabriela Gabriele Gareth George Gerhard
    Giovanni Giulia Giuseppe Greta Gunnar Gustav Hana Hannah Hanna Hans Harald Harry Heinz
    Helen Helena Helga Henrik Henry Hiroshi Hugo Ian Igor Ines Ingrid Irene Isabel Isabella
    Isak Ivan Jakob Jakub James Jan Jana Jane Janet Janka Jasmine Javier Jean Jennifer Jens
    Jessica Joanna Johan Johann Johanna John Jonas Jonathan Jorge Jose José Joseph Joshua Juan
    Julia Julian Julie Juliette Julien Jürgen Jussi Kai Karen Karin Karl Katarina Katarzyna
    Kate Katherine Kathleen Katja Katrin Katrine Kenji Kevin Kim Klaus Krisztina Kristian
    Kumar Lars Laura Lauren Lea Leila Lena Leo Leon Leonardo Leonie Liam Lina Linda Lisa Liu
    Lorenzo Louis Louise Luca Lucas Lucia Luis Luisa Lukas Magnus Maja Manuel Marco Marcus
    Margaret Maria María Marie Marina Mario Marion Marta Martha Martin Mary Mateo Matteo
    Matthew Matthias Max Maxim Mehmet Melanie Mia Michael Michal Michel Michelle Miguel Mikael
    Mikhail Milan Milena Mohammed Mohamed Muhammad Monika Natalia Natalie Nathan Nicholas
    Nicola Nicolas Nicole Niklas Nikolai Nils Nina Noah Nora Olga Oliver Olivia Omar Oscar
    Oskar Pablo Paolo Patricia Patrick Paul Paula Pedro Peter Petr Petra Philip Philippe
    Pierre Pietro Piotr Priya Rachel Rafael Rahul Raj Rajesh Ramón Raphael Rebecca Richard
    Rita Robert Roberto Roman Rosa Ruth Ryan Sabine Sakura Samantha Samuel Sandra Sanjay Sara
    Sarah Sebastian Sergei Sergey Sergio Shirley Simon Simone Sofia Sofie Sophia Sophie
    Stefan Stefanie Stephanie Stephen Steven Susan Susanne Sven Tatiana Teresa Thomas Tim
    Timo Timothy Tobias Tomas Tomasz Tom Ulrich Ursula Valentina Vanessa Vera Victor Viktor
    Vincent Virginia Vladimir Walter Wei Wilhelm William Wolfgang Xavier Yasmin Yuki Yusuf
    Zoe Zofia Zsofia Zoltan Zoltán Ágnes Éva István László Gábor Ferenc Sándor Tamás Attila
    Jarmila Jiří Josef Lucie Marek Pavel Tereza Václav Zdeněk Jelena Marija Milica Nikola
    Dragan Goran Ivana Ana Aleksandra Bogdan Tanja Mirjana Eino Aino Juha Kaisa Mikko Pekka
    Sanna Sigrid Solveig Ingeborg Knut Olav Leif Ragnar Sigurd Torbjørn Åsa Ebba Eero Siiri
    Kari Liisa Toni Jón Guðrún Sigríður Kristín Ólafur Helgi Einar Hiroko Naomi Haruto Yui
    Takeshi Satoshi Wang Zhang Mei Ling Jun Hao Arjun Vikram Anil Sunita Lakshmi Ravi Amit
    Pooja Neha Ananya Ibrahim Youssef Khalid Hassan Hussein Layla Mariam Noor Zainab Omar
    Kwame Ama Kofi Chinedu Ngozi Amara Thabo Sipho Zanele Oluwaseun Abebe Jorge Mateus
    Thiago Gabriela Larissa Camila Valeria Ximena Alejandra Santiago Sebastián Joaquín
    Rodrigo Francisca Adriana Renata Emilio Federico Giorgio Chiara Alessia Martina
    Federica Elisabetta Jacques Françoise Amélie Élodie Mathieu Nathalie Sébastien Stéphane
    Aurélie Margot Jeanne Théo Gerrit Joost Sanne Femke Pieter Bram Maarten Wouter Lieke
    Jesper Mette Rasmus Søren Mads Freja Tove Agneta Björk Oleksandr Olena Taras Yulia
    Natalya Svetlana Anastasia Ekaterina Irina Alexey Kirill Nikita Denis Artem Pavla
    Marcin Paweł Krzysztof Agnieszka Małgorzata Ewa Barbora Kateřina Veronika Tomáš
    Joanne Jenny Nancy Betty Helen Sharon Kimberly Donna Carolyn Cynthia Angela Melissa
    Brittany Heather Kelly Megan Amber Tiffany Kyle Scott Jeffrey Gary Larry Justin Brent
    Keith Roger Gregory Jerry Terry Sean Austin Jacob Logan Tyler Caleb Owen Connor Evan
    Gavin Wyatt Luke Isaac Leah Chloé Zoé Anaïs Inès Léa Manon Lucía Paula Valentina
    Aiden Jayden Liam Elijah Lucas Mason Ethan Jackson Sebastian Mateo Henry Alexander Michael
    Daniel Jacob Levi Grayson Carter Julian Wyatt Gabriel Lincoln Anthony Dylan Hudson Ezra
    Aaron Charles Thomas Christopher Jaxon Maverick Josiah Isaiah Andrew Elias Joshua Nathan
    Caleb Ryan Adrian Miles Eli Nolan Christian Aaron Cameron Ezekiel Colton Jeremiah Easton
    Brayden Jordan Dominic Austin Ian Adam Jose Angel Bryan Nathaniel Derek Todd Travis Shawn
    Brett Chad Craig Dale Darren Dustin Glenn Marvin Randy Troy Wayne Curtis Russell Bobby
    Johnny Jimmy Freddy Billy Danny Eddie Ricky Tony Lance Neil Ross Stuart Graham Nigel
    Olivia Sophia Isabella Charlotte Amelia Evelyn Abigail Harper Emily Elizabeth Avery Sofia
    Ella Madison Scarlett Victoria Aria Chloe Camila Penelope Riley Layla Lillian Nora Zoey
    Mila Aubrey Hannah Lily Addison Eleanor Natalie Luna Savannah Brooklyn Leah Zoe Stella
    Hazel Ellie Paisley Audrey Skylar Violet Claire Bella Aurora Lucy Anna Samantha Caroline
    Genesis Aaliyah Kennedy Kinsley Allison Maya Sarah Madelyn Adeline Alexa Ariana Elena
    Gabriella Naomi Alice Sadie Hailey Eva Emilia Autumn Quinn Nevaeh Piper Ruby Serenity
    Willow Everly Cora Kaylee Lydia Aubree Arianna Eliana Peyton Melanie Gianna Isabelle
    Julia Valentina Nova Clara Vivian Reagan Mackenzie Madeline Brielle Delilah Isla Rylee
    Katherine Sophie Josephine Ivy Liliana Jade Maria Taylor Hadley Kylie Emery Adalynn
    Natalia Annabelle Faith Alexandra Ximena Ashley Brianna Raelynn Bailey Mary Athena
    Andrea Leilani Jasmine Lyla Margaret Alyssa Adalyn Arya Norah Khloe Kayla Eden Eliza
    Rose Ariel Melody Alina Rachel Kristen Kirsten Jodi Jodie Gladys Roxanne Tracy Tammy
    Wendy Brittany Crystal Debbie Dolores Doris Gloria Irma Joan Judith Judy Lois Marilyn
    Mildred Norma Peggy Phyllis Rhonda Sheila Theresa Vicki Yvonne Caitlin Caitlyn Kaitlyn
    Mathias Johannes Jonathan Konstantin Matthias Maximilian Moritz Niklas Pascal Sascha
    Torsten Uwe Volker Jörg Dirk Frank Heike Ines Kerstin Silke Ute Anke Birgit Dagmar
    Enrico Fabio Fabrizio Gianluca Lorenza Massimo Michele Nicolò Riccardo Roberta Stefano
    Vittorio Alessio Beatrice Carlotta Giorgia Ilaria Serena Silvia Elisa Marcelo Mauricio
    Ricardo Gustavo Leonardo Luciana Mariana Fernanda Patrícia Bruna Letícia Vitória
    Weronika Kinga Dorota Grzegorz Jacek Jarosław Łukasz Mariusz Michał Wojciech Zbigniew
    Miklós Imre Zsolt Balázs Péter Judit Katalin Erzsébet Zsuzsanna Dóra Réka Nikolett
    Hedvig Vilma Sigrun Ingrid Linnea Ida Elsa Alva Saga Wilma Stina Kerstin Lennart Stig
    Mattias Fredrik Anders Niklas Oskar Ville Veikko Tapio Heikki Antti Ilkka Riikka
    """.split()
)
_AMBIGUOUS_NAMES = frozenset(
    """
    Will May June April August Mark Rose Grace Hope Faith Joy Bill Art Frank Guy Jack Pat
    Rich Sunny Summer Autumn Dawn Ivy Lily Daisy Ruby Amber Crystal Jade Pearl Holly Victoria
    Georgia Virginia Florence Paris Austin Jordan Chase Hunter Mason Carter Max Ray Don Iris
    Angel Christian Drew Gene Sue Kim Jan Toni Kai Noor Lea Mei Ling Jun Hao Ama Tim Tom Ana
    Ann Eve Amy Ali Wang Zhang Liu Chen Kumar Raj Luke Owen Evan Scott Kelly Megan Logan
    Tyler Caleb Isaac Leah Milan Lina Vera Rita Nora Sara Ella Emma Mia Julia Diana Martin
    Carol Paul Omar Victor Vincent Xavier Oscar Felix Hugo Louis Leo Leon Lucas Roman Simon
    Thomas Helen Cecilia Olivia Elsa Eric Dennis Denis Kari Björk Skylar Autumn Genesis
    Serenity Willow Nova Taylor Faith Melody Eden Madison Brooklyn Savannah Luna Stella Hazel
    Violet Aurora Piper Quinn Peyton Reagan Bailey Kennedy Lincoln Hudson Easton Riley Avery
    Harper Addison Sadie Ivy Jade Ariel Rose Crystal Frank Wayne Lance Ross Craig Dale Glenn
    Miles Eli Chad Ida Saga Joan Judy Doris Gloria Norma Peggy Sigrun Stig Ines
    """.split()
)
_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Madam|Mme|Mlle|Herr|Frau|Sr|Sra|Srta|Rev|Fr)"
# capitalised words that start sentences or label things but are not names
_NOT_NAMES = frozenset(
    """
    The A An This That These Those There Here Then When Where What Who Why How Which While
    If And Or But So Yet For Nor Not No Yes Hi Hello Hey Dear Thanks Thank Please Sorry Ok Okay
    I He She It We You They My His Her Its Our Your Their Me Him Us Them Mine
    Is Are Was Were Be Been Am Do Does Did Have Has Had Can Could Would Should Shall Must Might
    In On At By To From Of Off Up Down Out Over Under With Without About After Before Since
    Until During Into Onto Upon Via Per Re Fwd Cc Bcc Subject Date Time Name Phone Email
    Address Street Road Avenue Lane Drive Apt Suite Unit Box Floor Room Building City State
    Country Zip Code Mobile Fax Desk Office Home Work Website Personal Info Account Card Bank
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May
    June July August September October November December North South East West New Old
    Mr Mrs Ms Dr Prof Sir Madam Inc Ltd Llc Corp Co Company Group Team Support Customer Service
    Bot User Agent Admin System Assistant Manager Director President Doctor Professor Patient
    Street St Ave Rd Blvd Ln Way Court Ct Place Square Park Hill Center Centre Hospital
    University Institute College School Foundation Clinic Study Trial Society Association
    Department Ministry Council Committee Channel Valley River Lake Mount Bay Island Islands
    Declaration Act Law Program Programme Project Church Cathedral Airport Station Museum
    Cells Cell Virus Protein Syndrome Disease Type Class Phase Vitamin
    """.split()
)
# a name right after these is a place or a thing: "San Francisco", "Princess Margaret Hospital"
_PLACE_BEFORE = re.compile(
    r"\b(?:San|Santa|Santo|São|St\.?|Saint|Sainte|Princess|Prince|King|Queen|Lake|Mount|Mt\.?|"
    r"Port|Fort|Cape|Los|Las|El|La|Le|Villa|Via|Rue|Hurricane|Storm|Camp|HMS|USS)[ \t]+$"
)
_NAME_TOKEN = re.compile(rf"(?<![\w'’-])(?:{_UP}\.(?=[ \t])|{_CAPWORD})")
_NAME_NEXT = re.compile(rf"[ \t]+(?:({_UP})\.?(?=[ \t])|({_CAPWORD}))")
_PERSON_CUES: list[tuple[re.Pattern[str], float, bool]] = [
    # (cue, score, lowercase names allowed)
    (re.compile(rf"\b{_TITLES}\.?[ \t]+(?={_UP})"), 0.85, False),
    (re.compile(r"(?i:\bmy[ \t]+name[ \t]+is|\bmy[ \t]+name's)[ \t]+"), 0.8, True),
    (re.compile(r"(?i:\bcall[ \t]+me)[ \t]+(?=[^\W\d_])"), 0.7, False),
    (
        re.compile(r"(?i:\bname[ \t]*:|\bnamed|\bcalled|\bsigned[ \t]*[:,]?)[ \t]*(?=[^\W\d_])"),
        0.7,
        False,
    ),
    (
        re.compile(
            r"(?im:^[ \t>]*(?:best(?:[ \t]+regards|[ \t]+wishes)?|regards|kind[ \t]+regards|"
            r"sincerely|yours[ \t]+(?:truly|sincerely)|cheers|thanks|thank[ \t]+you|"
            r"warmly|cordially),?[ \t]*\n[ \t>]*)"
        ),
        0.75,
        False,
    ),
    (re.compile(r"(?i:\b(?:i'm|i[ \t]+am|this[ \t]+is|it's))[ \t]+(?=[^\W\d_])"), 0.6, False),
]
_LOWER_NAME = re.compile(r"([^\W\d_]{2,}(?:['’-][^\W\d_]+)?)(?:[ \t]+([^\W\d_]{2,}))?")
_LOWER_STOP = frozenset(
    "is was not a an the and or but in on at to from for of with my his her your our their "
    "very so too also just really here there this that please thanks thank sorry".split()
)


def _name_run(text: str, first_end: int, limit: int = 3) -> int:
    """Extend a name that ends at ``first_end`` over following capitalised words and initials
    ("Keira E. Forster"); an initial counts only when a name word follows it."""
    end = committed = first_end
    words = 0
    while words < limit:
        m = _NAME_NEXT.match(text, end)
        if m is None:
            break
        if m.group(1) is not None:  # an initial
            end = m.end()
            continue
        if not _is_name_word(m.group(2)):
            break
        end = committed = m.end()
        words += 1
    return committed


def _is_name_word(word: str) -> bool:
    return (
        word not in _NOT_NAMES
        and word[:1].isupper()
        and (len(word) == 1 or not word.isupper())
        and not any(ch.isdigit() for ch in word)
    )


def _persons(text: str) -> Iterator[Span]:
    # 1. cues: titles, "my name is", "Name:", sign-offs, "I'm"
    for regex, score, lowercase in _PERSON_CUES:
        for m in regex.finditer(text):
            pos = m.end()
            tok = _NAME_TOKEN.match(text, pos)
            if tok is not None and _is_name_word(tok.group().rstrip(".")):
                end = _name_run(text, tok.end())
                words = text[pos:end].split()
                if score == 0.6:  # "I'm X": X must look like a name, not "I'm Happy"
                    known = words[0] in _GIVEN_NAMES and words[0] not in _AMBIGUOUS_NAMES
                    if not known and len(words) < 2:
                        continue
                if len(words) == 1 and words[0].endswith(".") and len(words[0]) == 2:
                    continue
                yield _span("PERSON", text, pos, end, score)
            elif lowercase:
                low = _LOWER_NAME.match(text, pos)
                if low is None or low.group(1).lower() in _LOWER_STOP:
                    continue
                end = low.end(1)
                if low.group(2) and low.group(2).lower() not in _LOWER_STOP:
                    end = low.end(2)
                yield _span("PERSON", text, pos, end, score - 0.1)
    # 2. known given names, alone or with a surname; "First M. Last"
    for m in _NAME_TOKEN.finditer(text):
        word = m.group()
        if word.endswith(".") or _PLACE_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            continue
        end = _name_run(text, m.end())
        words = text[m.start() : end].split()
        if word in _GIVEN_NAMES:
            if len(words) >= 2:
                yield _span("PERSON", text, m.start(), end, 0.75)
            elif word not in _AMBIGUOUS_NAMES:
                yield _span("PERSON", text, m.start(), end, 0.55)
        elif (
            len(words) >= 3
            and re.fullmatch(rf"{_UP}\.", words[1])
            and _is_name_word(word)
            and _is_name_word(words[2])
        ):
            yield _span("PERSON", text, m.start(), end, 0.7)


_ORG_SUFFIX = (
    r"(?:Inc|Incorporated|LLC|L\.L\.C|Ltd|Limited|Corp|Corporation|Co|Company|GmbH|AG|SE|"
    r"S\.A|SA|S\.p\.A|SpA|S\.r\.l|Srl|PLC|plc|LLP|LP|N\.V|NV|B\.V|BV|Pty|Oy|Oyj|AB|ASA|A/S|"
    r"KG|Holdings|Group|Associates|Partners|Technologies|Solutions|Systems|Bank|Foundation|"
    r"Institute|University|Labs|Laboratories|Industries|Enterprises|Consulting|Software)"
)
_ORG = re.compile(
    rf"(?<![\w'’-])(?:{_CAPWORD}|&|and|of)(?:[ \t]+(?:{_CAPWORD}|&|and|of|for)){{0,4}}?"
    rf",?[ \t]+{_ORG_SUFFIX}\b\.?"
)


def _orgs(text: str) -> Iterator[Span]:
    for m in _ORG.finditer(text):
        start, end = m.span()
        words = text[start:end].split()
        while words and (
            words[0] in _NOT_NAMES
            or words[0] in ("&", "and", "of")
            or (len(words[0]) >= 5 and words[0].isupper())  # a heading: "FUNDING National ..."
        ):
            start = text.index(words[0], start) + len(words[0])
            while start < end and text[start] in " \t":
                start += 1
            words.pop(0)
        if len(words) < 2:
            continue
        yield _span("ORGANIZATION", text, start, end, 0.6)


_COUNTRIES = """
Afghanistan|Albania|Algeria|Andorra|Angola|Argentina|Armenia|Australia|Austria|Azerbaijan|
Bahamas|Bahrain|Bangladesh|Barbados|Belarus|Belgium|Belize|Benin|Bhutan|Bolivia|
Bosnia and Herzegovina|Botswana|Brazil|Brunei|Bulgaria|Burkina Faso|Burundi|Cambodia|
Cameroon|Canada|Cape Verde|Central African Republic|Chad|Chile|China|Colombia|Comoros|
Congo|Costa Rica|Croatia|Cuba|Cyprus|Czech Republic|Czechia|Denmark|Djibouti|Dominica|
Dominican Republic|Ecuador|Egypt|El Salvador|Equatorial Guinea|Eritrea|Estonia|Eswatini|
Ethiopia|Fiji|Finland|France|Gabon|Gambia|Georgia|Germany|Ghana|Greece|Greenland|Grenada|
Guatemala|Guinea|Guinea-Bissau|Guyana|Haiti|Honduras|Hong Kong|Hungary|Iceland|India|
Indonesia|Iran|Iraq|Ireland|Israel|Italy|Ivory Coast|Jamaica|Japan|Jordan|Kazakhstan|Kenya|
Kiribati|Kosovo|Kuwait|Kyrgyzstan|Laos|Latvia|Lebanon|Lesotho|Liberia|Libya|Liechtenstein|
Lithuania|Luxembourg|Madagascar|Malawi|Malaysia|Maldives|Mali|Malta|Mauritania|Mauritius|
Mexico|Micronesia|Moldova|Monaco|Mongolia|Montenegro|Morocco|Mozambique|Myanmar|Namibia|
Nauru|Nepal|Netherlands|New Zealand|Nicaragua|Niger|Nigeria|North Korea|North Macedonia|
Norway|Oman|Pakistan|Palau|Palestine|Panama|Papua New Guinea|Paraguay|Peru|Philippines|
Poland|Portugal|Puerto Rico|Qatar|Romania|Russia|Russian Federation|Rwanda|Saint Lucia|
Samoa|San Marino|Saudi Arabia|Senegal|Serbia|Seychelles|Sierra Leone|Singapore|Slovakia|
Slovenia|Somalia|South Africa|South Korea|South Sudan|Spain|Sri Lanka|Sudan|Suriname|
Sweden|Switzerland|Syria|Taiwan|Tajikistan|Tanzania|Thailand|Timor-Leste|Togo|Tonga|
Trinidad and Tobago|Tunisia|Turkey|Türkiye|Turkmenistan|Tuvalu|Uganda|Ukraine|
United Arab Emirates|United Kingdom|United States|United States of America|Uruguay|
Uzbekistan|Vanuatu|Vatican City|Venezuela|Vietnam|Yemen|Zambia|Zimbabwe|England|Scotland|
Wales|Northern Ireland|Great Britain|Faroe Islands|USA|UK|U\\.S\\.A\\.|U\\.K\\.|UAE
"""
_STATES = """
Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Hawaii|
Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|
Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|
New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|
Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|
West Virginia|Wisconsin|Wyoming
"""


def _alternation(words: str) -> str:
    items = [w.strip() for w in words.replace("\n", "").split("|") if w.strip()]
    items.sort(key=len, reverse=True)
    return "|".join(items)


_LOCATION = re.compile(
    rf"(?<![\w-])(?:(?:the[ \t]+)?(?:{_alternation(_COUNTRIES)})|(?:{_alternation(_STATES)}))"
    r"(?![\w-])"
)
_NRP_WORDS = """
American|British|English|Scottish|Welsh|Irish|French|German|Italian|Spanish|Portuguese|
Dutch|Belgian|Swiss|Austrian|Swedish|Norwegian|Danish|Finnish|Icelandic|Polish|Czech|
Slovak|Slovenian|Croatian|Serbian|Bosnian|Hungarian|Romanian|Bulgarian|Greek|Turkish|
Russian|Ukrainian|Belarusian|Estonian|Latvian|Lithuanian|Georgian|Armenian|Chechen|
Albanian|Macedonian|Maltese|Cypriot|Canadian|Mexican|Brazilian|Argentine|Argentinian|
Chilean|Colombian|Peruvian|Venezuelan|Ecuadorian|Ecuadorean|Bolivian|Uruguayan|Paraguayan|
Cuban|Haitian|Jamaican|Dominican|Puerto Rican|Guatemalan|Honduran|Salvadoran|Nicaraguan|
Costa Rican|Panamanian|Belizean|Chinese|Japanese|Korean|Vietnamese|Thai|Cambodian|Laotian|
Burmese|Malaysian|Singaporean|Indonesian|Filipino|Indian|Pakistani|Bangladeshi|
Sri Lankan|Nepali|Nepalese|Afghan|Iranian|Persian|Iraqi|Syrian|Lebanese|Jordanian|Israeli|
Palestinian|Saudi|Emirati|Kuwaiti|Qatari|Omani|Yemeni|Egyptian|Libyan|Tunisian|Algerian|
Moroccan|Sudanese|Ethiopian|Eritrean|Somali|Kenyan|Ugandan|Tanzanian|Rwandan|Nigerian|
Ghanaian|Senegalese|Malian|Cameroonian|Congolese|Angolan|Zambian|Zimbabwean|Mozambican|
South African|Namibian|Australian|New Zealander|Kazakh|Uzbek|Mongolian|Tibetan|Kurdish|
Arab|Arabic|Hispanic|Latino|Latina|Asian|African|European|Caucasian|Jewish|Muslim|
Christian|Catholic|Protestant|Orthodox|Hindu|Buddhist|Sikh|Jain|Mormon|Sunni|Shia|Shiite|
Atheist|Agnostic|Democrat|Republican|Communist|Socialist|Conservative|Liberal|Libertarian
"""
_NRP = re.compile(rf"(?<![\w-])(?:{_alternation(_NRP_WORDS)})(?:e?s)?(?![\w-])")


def _locations(text: str) -> Iterator[Span]:
    for m in _LOCATION.finditer(text):
        start = m.start()
        if text[start : start + 4].lower() == "the ":
            start += 4
            while text[start] in " \t":
                start += 1
        yield _span("LOCATION", text, start, m.end(), 0.6)


def _nrps(text: str) -> Iterator[Span]:
    for m in _NRP.finditer(text):
        yield _span("NRP", text, m.start(), m.end(), 0.55)


# An address is a block: the street pieces found above are joined when only spaces, commas or
# line breaks separate them, then grown over a leading house number and trailing unit, city,
# region, postal code and country parts.
_ADDR_SEP = r"(?:[ \t]*,[ \t]*(?:\n[ \t>]*)?|[ \t]*\n[ \t>]*,?[ \t]*|[ \t]+)"
_ADDR_PART = re.compile(
    rf"{_ADDR_SEP}(?:"
    r"(?P<unit>(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg|Building)\.?[ \t]*\#?"
    r"[ \t]*[A-Za-z]?\d{1,5}[A-Za-z]?\b)"
    r"|(?P<postal>\d{3,6}(?:[ -]\d{2,4})?(?![\w-])|[A-Z]{1,2}\d[A-Z\d]?[ \t]\d[A-Z]{2}\b|"
    r"[A-Z]\d[A-Z][ \t]?\d[A-Z]\d\b)"
    rf"|(?P<country>(?:{_alternation(_COUNTRIES)})(?:[ \t]*\([^)\n]{{1,30}}\))?)(?![\w-])"
    rf"|(?P<region>(?:{'|'.join(_US_STATES.split())})\b(?![.'’-]\w))"
    rf"|(?P<place>(?:{_CAPWORD}|{_UP}{{2,}})(?:[ \t-]+(?:{_CAPWORD}|{_UP}{{2,}}|de|del|da|do|"
    r"di|la|le|sur|am|an|upon|on|nad|pod)){0,3})"
    r")"
)
_ADDRESS_STOPWORDS = frozenset(
    "the a an and or of in on at to for with from by its it is are was were be my your our "
    "his her their this that these those than then patients people years months days weeks "
    "times about least most more less".split()
)
_HOUSE_BEFORE = re.compile(r"(?<![\w.,-])\d{1,6}[A-Za-z]?[ \t]+$")
# the street before a unit: "Spinatsch 94 Apt. 615", "Belgrád rkp. 18. Apt. 417"
_STREET_BEFORE_UNIT = re.compile(
    rf"(?<![\w.,-])(?:\d{{1,6}}[ \t]+)?{_CAPWORD}(?:[ \t]+[^\W\d_][\w'’-]*\.?){{0,3}}"
    r"[ \t]+\d{1,5}[A-Za-z]?\.?,?[ \t]+$"
)
_ENDS_WITH_ZIP = re.compile(r"\b\d{5}(?:-\d{4})?$")
_UNIT_START = re.compile(r"(?:Apt|Apartment|Suite|Ste)\b")


def _grow_address(text: str, start: int, end: int) -> tuple[int, int, bool]:
    """Extend an address over its house number and its unit/city/region/postal/country."""
    if _UNIT_START.match(text, start):
        m = _STREET_BEFORE_UNIT.search(text, max(0, start - 60), start)
        if m is not None:
            start = m.start()
    m = _HOUSE_BEFORE.search(text, max(0, start - 8), start)
    if m is not None:
        start = m.start()
    postal = complete = _ENDS_WITH_ZIP.search(text, start, end) is not None
    committed = pos = end
    for _ in range(8):
        m = _ADDR_PART.match(text, pos)
        if m is None:
            break
        kind = m.lastgroup
        if kind == "place":
            if m.group("place").split()[0] in _NOT_NAMES:
                break
            pos = m.end()
            continue
        if postal and kind != "country":
            break
        postal = postal or kind == "postal"
        complete = complete or kind in ("postal", "country", "region")
        pos = committed = m.end()
    return start, committed, complete


def _addresses(text: str) -> Iterator[Span]:
    pieces: list[tuple[int, int, float]] = []
    for regex, score in _ADDRESSES:
        for m in regex.finditer(text):
            if regex.groups:  # found after a cue: the words must not be ordinary prose
                start, end = m.span(1)
                words = re.findall(r"[^\W\d_]+", m.group(1).lower())
                if any(w in _ADDRESS_STOPWORDS for w in words):
                    continue
            else:
                start, end = m.span()
            while end > start and text[end - 1] in " \t\n,":
                end -= 1
            pieces.append((start, end, score))
    pieces.sort()
    blocks: list[tuple[int, int, float]] = []
    for start, end, score in pieces:
        if blocks:
            b_start, b_end, b_score = blocks[-1]
            gap = text[b_end:start]
            if start <= b_end or (len(gap) <= 6 and not gap.strip(" \t\n,")):
                blocks[-1] = (b_start, max(b_end, end), max(b_score, score))
                continue
        blocks.append((start, end, score))
    for a, b, score in blocks:
        start, end, complete = _grow_address(text, a, b)
        yield _span("STREET_ADDRESS", text, start, end, score + (0.05 if complete else 0.0))


# --------------------------------------------------------------------------------------------
# detect_pii

_Recognizer = Callable[[str], Iterator[Span]]
_RECOGNIZERS: dict[str, _Recognizer] = {
    "CREDIT_CARD": _cards,
    "IBAN_CODE": _ibans,
    "US_SSN": _ssns,
    "IP_ADDRESS": _ips,
    "PHONE_NUMBER": _phones,
    "US_DRIVER_LICENSE": _licenses,
    "ZIP_CODE": _zips,
    "DATE_TIME": _dates,
    "AGE": _ages,
    "DOMAIN_NAME": _domains,
    "STREET_ADDRESS": _addresses,
    "PERSON": _persons,
    "ORGANIZATION": _orgs,
    "LOCATION": _locations,
    "NRP": _nrps,
}


def detect_pii(
    text: str, entities: Collection[str] | None = None, *, min_score: float = 0.5
) -> list[Span]:
    """Find PII in ``text``: spans sorted by start, not overlapping.

    Every detector runs; spans scoring below ``min_score`` are dropped, overlaps are resolved
    (higher score wins, then the longer span), and only then is the result limited to
    ``entities`` (see :data:`ENTITY_TYPES`). So asking for phone numbers only never returns
    the digits of a card number or an IBAN, and a filtered call returns exactly the matching
    part of an unfiltered one. Unknown entity names raise :class:`keel.errors.UsageError`.
    """
    if entities is None:
        wanted = set(ENTITY_TYPES)
    else:
        wanted = set(entities)
        unknown = wanted - set(ENTITY_TYPES)
        if unknown:
            from keel.errors import UsageError

            raise UsageError(f"unknown PII entity types: {sorted(unknown)}")
    if not text:
        return []
    candidates: list[Span] = list(_emails(text, _urls(text)))
    for recognizer in _RECOGNIZERS.values():
        candidates.extend(recognizer(text))
    kept = resolve_overlaps(s for s in candidates if s.score >= min_score)
    return [s for s in kept if s.entity_type in wanted]


# --------------------------------------------------------------------------------------------
# Redactor

_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")


class Redactor:
    """Replaces PII with placeholders like ``<EMAIL_ADDRESS_1>``, consistent within a
    conversation: the same value always gets the same placeholder; the mapping can be saved
    and restored.

    >>> r = Redactor()
    >>> text = "mail bob@example.com"
    >>> r.redact(text, detect_pii(text))
    'mail <EMAIL_ADDRESS_1>'
    >>> Redactor(r.mapping).redact("again bob@example.com", detect_pii("again bob@example.com"))
    'again <EMAIL_ADDRESS_1>'
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self._mapping: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        for value, placeholder in (mapping or {}).items():
            self._remember(value, placeholder)

    def _remember(self, value: str, placeholder: str) -> None:
        self._mapping[value] = placeholder
        m = _PLACEHOLDER.fullmatch(placeholder)
        if m is not None:
            kind, n = m.group(1), int(m.group(2))
            self._counts[kind] = max(self._counts.get(kind, 0), n)

    def placeholder(self, value: str, entity_type: str) -> str:
        """The placeholder for ``value`` (a new one the first time it is seen)."""
        found = self._mapping.get(value)
        if found is None:
            n = self._counts.get(entity_type, 0) + 1
            found = f"<{entity_type}_{n}>"
            self._remember(value, found)
        return found

    def redact(self, text: str, spans: Sequence[Span]) -> str:
        """``text`` with every span replaced by its placeholder. Overlapping spans are resolved
        first (higher score, then longer)."""
        out: list[str] = []
        pos = 0
        for span in resolve_overlaps(spans):
            if span.start < pos or span.end > len(text):
                continue
            out.append(text[pos : span.start])
            out.append(self.placeholder(text[span.start : span.end], span.entity_type))
            pos = span.end
        out.append(text[pos:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """Put the original values back in place of the placeholders this redactor issued."""
        reverse = {placeholder: value for value, placeholder in self._mapping.items()}
        return _PLACEHOLDER.sub(lambda m: reverse.get(m.group(), m.group()), text)

    @property
    def mapping(self) -> dict[str, str]:
        """value -> placeholder; pass it to ``Redactor(mapping)`` to continue a conversation."""
        return dict(self._mapping)
