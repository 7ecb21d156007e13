"""Prompt-injection detector: named heuristics plus a small logistic model on sentence embeddings.

How a text is scored:

* **Heuristics** are compiled regular expressions for attack patterns that carry over between
  corpora: orders to ignore earlier instructions, requests for the system prompt, the text above
  or the system's secrets, role switches and jailbreak personas, "no restrictions" clauses, fake
  chat delimiters (``[INST]``, ``<|im_start|>``, ``### system``), and orders addressed to an AI
  that reads a document (indirect injection). They run on the whole text (NFKC-normalised, zero
  width characters removed); each one that matches is a named reason in the result.
* **Embedding**: the bundled all-MiniLM-L6-v2 vector. A text of up to 1,000 characters is one
  window, and :meth:`InjectionDetector.score` takes its vector from ``Embedder.embed_query`` (the
  same cached vector retrieval uses) or from the caller. MiniLM reads only 256 tokens, so longer
  texts are read in overlapping 800-character windows (stride 600, at most 8, spread to cover
  both ends); the text's score is its highest window's.
* **Character n-grams** (weights format 2 only; the shipped weights are format 1, without
  them): hashed character 3- to 5-grams of each window (NFKC-normalised, lower-cased;
  scikit-learn's ``HashingVectorizer``, imported when such a detector is made), so that attacks
  in other languages share sub-word cues with the ones in training.
* **Model**: logistic regression over ``[embedding, heuristic indicators, log(1 + window
  length)]`` (plus the n-gram block in format 2), trained by
  ``scripts/train_injection_detector.py`` and shipped as plain weights in
  ``_data/injection.json``; it is scored here with numpy.

The thresholds in the weights file were chosen on a validation split for a 1 % and a 3 % false
positive rate; 3 % is the default for requests (user input). Retrieved chunks and tool results
are documents, not requests, and use the ``context`` threshold, chosen on ordinary documentation
the detector never trained on (:mod:`keel.guardrails.calibration`); in a document, an order
addressed to the AI (:data:`DOCUMENT_HEURISTICS`) flags it by itself.
``InjectionDetector.metadata`` carries the held-out metrics, the thresholds and the sha256 of
every training input.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import copy
import functools
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.errors import ConfigError
from keel.guardrails.injection_languages import EXTRA

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from keel.rag.embeddings import Embedder

    FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]

WEIGHTS_PATH = Path(__file__).parent / "_data" / "injection.json"
# 1: one dense weight vector over [embedding, heuristics, log length]; 2: the same, plus the
# hashed character n-gram block (``model.char_ngrams``), which format 1 files do not have
FORMAT = 2
READABLE_FORMATS = (1, 2)
_NGRAM_ENCODING = "zlib+base64 int32 little-endian, units of 10**-decimals"

LONG_TEXT = 1000  # characters; longer texts are read in windows
WINDOW = 800
STRIDE = 600
MAX_WINDOWS = 8

_I = re.IGNORECASE
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"))


@dataclass(frozen=True)
class Heuristic:
    """A named pattern; ``check`` (optional) must also accept the matched text."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    # the same family in other languages: tried only on texts holding one of ``anchors``
    other_languages: re.Pattern[str] | None = None
    anchors: tuple[str, ...] = ()

    def matches(self, text: str) -> bool:
        if self.check is None:
            if self.pattern.search(text) is not None:
                return True
        elif any(self.check(m.group(0)) for m in self.pattern.finditer(text)):
            return True
        if self.other_languages is None:
            return False
        lowered = text.lower()
        return any(a in lowered for a in self.anchors) and (
            self.other_languages.search(text) is not None
        )


def _mixed_base64(blob: str) -> bool:
    """A long run that looks like base64 text rather than a hex digest or a word."""
    return (
        any(c.isupper() for c in blob)
        and any(c.islower() for c in blob)
        and any(c.isdigit() for c in blob)
    )


_VERB_REVEAL = (
    r"(?:reveal|print|show|display|output|repeat|tell|give|share|leak|dump|disclose|recite|echo"
    r"|encode|translate|summari[sz]e|write\s+out|spell\s+out|paste|copy|expose|return|list"
    r"|see|access|extract|obtain|what\s+(?:is|are|was|were))"
)
_SECRET = (
    r"(?:api[\s_-]?keys?|passwords?|passphrases?|secrets?|credentials|access\s+tokens?"
    r"|auth(?:entication)?\s+tokens?|env(?:ironment)?\s+variables|private\s+keys?|ssh\s+keys?"
    r"|connection\s+strings?)"
)
_AI = r"(?:ai|a\.i\.|assistant|language\s+model|llm|chatbot|gpt|model|bot|agent)"

HEURISTICS: tuple[Heuristic, ...] = (
    Heuristic(
        "ignore_previous_instructions",
        re.compile(
            r"\b(?:ignore|disregard|forget|skip|override|overwrite|bypass|abandon|discard"
            r"|neglect|drop|stop\s+following)\b[^.!?\n]{0,40}?"
            r"\b(?:previous|prior|above|earlier|preceding|original|initial|old|existing|all|any"
            r"|your|the|these|those)\b[^.!?\n]{0,30}?"
            r"\b(?:instructions?|rules|prompts?|directives?|guidelines|commands|programming"
            r"|guardrails|constraints|restrictions|training|system\s+messages?)\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?|everything\s+)?(?:the\s+|what(?:'s|"
            r"\s+is|\s+was)\s+)?(?:above|previous|prior|preceding)(?:\s+(?:text|context|messages?"
            r"|conversation|content|prompt))?\s*(?:[.,;:!]|and\b|then\b|$)"
            r"|\bignor(?:a|e[sz]?)\s+(?:todas\s+|toutes\s+)?(?:las|les)\s+instruc(?:ciones|tions)"
            r"|\bignorier(?:e|en)?\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen)\s+anweisungen",
            _I,
        ),
    ),
    Heuristic(
        "forget_everything",
        re.compile(
            r"\b(?:forget|disregard|ignore)\s+(?:about\s+)?(?:everything|all(?:\s+of)?\s+that"
            r"|what\s+you\s+(?:were|have\s+been)\s+told)\s+(?:you|that|above|before|prior|said"
            r"|learned|previously|so\s+far|up\s+to)",
            _I,
        ),
    ),
    Heuristic(
        "reveal_system_prompt",
        re.compile(
            r"\b" + _VERB_REVEAL + r"\b[^.!?\n]{0,40}?\b(?:system|initial|hidden|secret|original"
            r"|starting|developer|internal|previous|first|pre)[\s_-]?(?:prompt|instructions?"
            r"|message|directives?|configuration|rules)\b"
            r"|\b(?:reveal|print|show|display|output|repeat|dump|disclose|recite|echo|encode|leak"
            r"|paste|expose|list|give\s+me|tell\s+me|spell\s+out|write\s+out|quote)\b"
            r"[^.!?\n]{0,30}?\byour\s+(?:[\w-]+\s+){0,2}?(?:instructions|rules|prompt|directives"
            r"|configuration|guidelines|context\s+window)\b"
            r"|\b(?:the|your|my)\s+system\s+(?:prompt|instructions)\s+(?:is|says|reads|are)\b"
            r"|\b(?:prompt|instrucciones)\s+del\s+sistema\b|\bsystemprompt\b|\bprompt\s+syst[eè]me\b"
            r"|\bconsole\.log\(\s*system|\bsystem_?prompt\s*\)",
            _I,
        ),
    ),
    Heuristic(
        "reveal_prior_text",
        re.compile(
            r"\b(?:repeat|print|output|reproduce|copy|echo|recite|show|display|return|quote)\b"
            r"[^.!?\n]{0,40}?\b(?:text|words|everything|content|conversation|message|instructions"
            r"|prompt)\b[^.!?\n]{0,30}?\b(?:above|before\s+this|so\s+far|verbatim"
            r"|word\s+for\s+word|at\s+the\s+(?:beginning|start)|you\s+were\s+(?:given|told)"
            r"|you\s+received)"
            r"|\b(?:written|said|stated|typed)\s+above\s+(?:this|my)\b"
            r"|\b(?:repeat|print|output|reproduce|copy|echo|recite|show|display|return|quote|encode"
            r"|translate|rewrite)\s+(?:\w+\s+){0,3}?(?:above|previous|preceding|initial)\s+(?:text"
            r"|words|content|message|prompt|instructions)\b"
            r"|\b(?:encode|translate|rewrite|summari[sz]e|reverse)\b[^.!?\n]{0,30}?\b(?:text|words"
            r"|everything)\s+you\s+(?:were|have\s+been)\s+(?:given|told)\b"
            r"|\b(?:everything|all|the\s+text)\s+(?:that\s+comes\s+|written\s+)?before\s+"
            r"['\"]?(?:user|human|this\s+message)\b",
            _I,
        ),
    ),
    Heuristic(
        "instruction_probe",
        re.compile(
            r"\bwhat\s+(?:were|are|have)\s+you\s+(?:been\s+)?(?:told|instructed|programmed"
            r"|not\s+(?:supposed|allowed)\s+to)\b|\b(?:my|your)\s+instructions\s+(?:are|were)\s*:"
            r"|\bI\s+was\s+instructed\s+to\b|\binitiali[sz]ation\s+string\b",
            _I,
        ),
    ),
    Heuristic(
        "role_switch",
        re.compile(
            r"\byou\s+are\s+(?:now|no\s+longer)\b(?!\s+(?:able|ready|done|set|logged|signed"
            r"|subscribed|on|using|connected|all\s+set|enrolled|registered|showing|seeing"
            r"|viewing|being|eligible)\b)"
            r"|\bfrom\s+now\s+on,?\s+(?:you|your)\b|\b(?:pretend|imagine)\s+(?:that\s+)?you"
            r"\s+(?:are|were|have)\b|\bpretend\s+to\s+be\b|\brole-?play\s+as\b"
            r"|\bimmerse\s+yourself\b|\b(?:act|behave|respond|answer)\s+as\s+(?:if\s+you\s+"
            r"(?:are|were)\s+)?(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|evil|amoral"
            r"|jailbroken|rogue)\b",
            _I,
        ),
    ),
    Heuristic(
        "jailbreak_persona",
        re.compile(
            r"\b(?:DAN|STAN|DUDE|UCAR|BetterDAN|AntiDAN|APOPHIS|BasedGPT)\b"
            r"|\b(?i:jailbr(?:ea|o)k(?:en|s|ing)?)\b"
        ),
    ),
    Heuristic("do_anything_now", re.compile(r"\bdo\s+anything\s+now\b", _I)),
    Heuristic(
        "developer_mode",
        re.compile(
            r"\b(?:developer|god|jailbreak|unrestricted|unfiltered|uncensored|evil|chaos|dan)"
            r"\s+mode\b|\b(?:debug(?:ging)?|maintenance|admin(?:istrator)?|sudo|root)\s+mode\s+"
            r"(?:is\s+)?(?:enabled|activated|engaged|on)\b|\byou\s+are\s+(?:now\s+)?in\s+"
            r"(?:debug|maintenance|admin|developer)\s+mode\b",
            _I,
        ),
    ),
    Heuristic(
        "no_restrictions",
        re.compile(
            r"\b(?:no|without|free\s+(?:of|from)|zero|bypass(?:ing)?|remov(?:e|ing)|disabl(?:e|ing)"
            r"|ignor(?:e|ing)|beyond|not\s+(?:bound|restricted|limited)\s+by|(?:turn|switch)(?:ing)?"
            r"\s+off|deactivat(?:e|ing)|lift(?:ing)?"
            r"|(?:doesn'?t|don'?t|does\s+not|do\s+not)\s+(?:care\s+about|follow|have|abide\s+by))"
            r"\s+(?:(?:any|all|the|your|its|their|moral\s+or|of)\s+){0,2}(?:restrictions"
            r"|filters?|filtering|censorship|guidelines|ethics|ethical\s+(?:guidelines|constraints"
            r"|boundaries|considerations|principles)|morals?|morality|content\s+polic(?:y|ies)"
            r"|content\s+filter(?:s|ing)?|safety\s+(?:guidelines|filters|measures|protocols|rules)"
            r"|guardrails|limitations|boundaries|disclaimers)\b"
            r"|\b(?:restrictions|filters|safeguards|guardrails|safety\s+rules)\s+(?:are\s+|have\s+"
            r"been\s+)?(?:lifted|removed|disabled|off|suspended|deactivated|void)\b"
            r"|\b(?:you|ai|assistant|model|bot|gpt)\b[^.!?\n]{0,25}?\b(?:with\s+no|without|had\s+no"
            r"|have\s+no|has\s+no)\s+(?:rules|limits|boundaries|morals|ethics|filters|restrictions)\b",
            _I,
        ),
    ),
    Heuristic(
        "amoral_persona",
        re.compile(
            r"\b(?:unfiltered|uncensored|amoral|unrestricted|unethical|immoral|unshackled"
            r"|unchained|unhinged)\b",
            _I,
        ),
    ),
    Heuristic(
        "never_refuse",
        re.compile(
            r"\b(?:never|don'?t|do\s+not|must\s+not|cannot|can'?t|won'?t|will\s+not|should\s+not"
            r"|shouldn'?t|not\s+allowed\s+to)\s+(?:ever\s+)?(?:refuse|decline)\b"
            r"|\balways\s+(?:answer|comply|respond|provide|obey)\b[^.!?\n]{0,40}?"
            r"\b(?:regardless|no\s+matter|even\s+if)\b|\bregardless\s+of\s+(?:how\s+)?(?:legal"
            r"|illegal|legality|ethic|moral|immoral|harmful|dangerous|offensive|inappropriate)"
            r"|\bnever\s+(?:say|tell\s+me)\s+(?:that\s+)?you\s+(?:can'?t|cannot|are\s+unable)"
            r"|\bevery\s+time\s+you\s+refuse\b|\b(?:lose|deduct(?:ed)?)\s+\d+\s+tokens\b",
            _I,
        ),
    ),
    Heuristic(
        "content_policy",
        re.compile(
            r"\b(?:openai|anthropic|google|meta)(?:'s|s)?\s+(?:content\s+)?(?:polic(?:y|ies)"
            r"|guidelines|rules|restrictions)\b|\bcontent\s+polic(?:y|ies)\b",
            _I,
        ),
    ),
    Heuristic(
        "stay_in_character",
        re.compile(
            r"\b(?:stay|remain|keep)\s+in\s+character\b|\bbreak(?:ing|s)?\s+(?:of\s+)?character\b"
            r"|\bstay\s+in\s+the\s+role\b",
            _I,
        ),
    ),
    Heuristic(
        "fake_delimiter",
        re.compile(
            r"\[/?INST\]|<\|?\s*(?:im_start|im_end|endoftext|eot_id|start_header_id)\s*\|?>"
            r"|<<\s*/?SYS\s*>>|<\s*/?\s*system(?:_prompt)?\s*>"
            r"|(?im:^[ \t]*#{2,}[ \t]*(?:system(?:[ \t]+(?:prompt|message|override|instructions?))?"
            r"|new[ \t]+instructions?|admin|developer)[ \t]*(?::|#|$))"
            r"|\b(?:END|BEGIN|START)\s+(?:OF\s+)?(?:NEW\s+)?(?:INSTRUCTIONS|SYSTEM\s+PROMPT"
            r"|PROMPT|CONTEXT|USER\s+INPUT)\b"
            r"|(?m:^[ \t]*(?:system|SYSTEM|System)[ \t]*:[ \t])"
            r"|\[(?:system|SYSTEM|System)(?:\s+(?:message|note|override|prompt))?\]"
        ),
    ),
    Heuristic(
        "secret_request",
        re.compile(
            r"\b(?:"
            + _VERB_REVEAL
            + r"|what's)\b[^.!?\n]{0,40}?\b(?:your|the\s+system'?s?|the\s+(?:admin"
            r"|administrator|root|server|database|developer|production)'?s?|internal|stored"
            r"|all(?:\s+the)?|its)\s+(?:[\w-]+\s+){0,2}?" + _SECRET + r"\b"
            r"|\b"
            + _SECRET
            + r"\s+(?:that\s+|which\s+)?(?:you\s+(?:use|have|store|keep|were\s+given"
            r"|run\s+with|can\s+access)|(?:stored|kept|saved|configured)\s+in\s+your)\b"
            r"|\b(?:read|cat|open|print|show|dump)\b[^.!?\n]{0,30}?(?<![\w.])\.env\b",
            _I,
        ),
    ),
    Heuristic(
        "new_instructions",
        re.compile(
            r"\b(?:new|updated|real|actual|true|revised|overriding)\s+(?:instructions|rules"
            r"|directives|system\s+prompt|orders)\s*(?::|are\b|follow\b)"
            r"|\byour\s+(?:new|real|only|true)\s+(?:task|goal|purpose|job|instructions?"
            r"|objective|mission)\b|\binstead,?\s+(?:you\s+(?:will|must|should)|reply|respond"
            r"|say|output|print)\b|\bnew\s+instructions\s*[-\u2013\u2014]",
            _I,
        ),
    ),
    Heuristic(
        "indirect_address",
        re.compile(
            r"\b" + _AI + r"s?\b[^.!?\n]{0,30}?\b(?:reading|processing|summari[sz]ing"
            r"|analy[sz]ing|parsing|seeing|that\s+reads)\s+this\b|\b(?:note|message|instructions?"
            r"|attention)\s+(?:to|for)\s+(?:the\s+|any\s+)?" + _AI + r"s?\b|\bif\s+you\s+are\s+an?"
            r"\s+(?:ai|a\.i\.|assistant|language\s+model|llm|chatbot)\b"
            r"|\b"
            + _AI
            + r"s?\s+(?:handling|reading|processing|receiving|summari[sz]ing)\s+(?:this"
            r"|the\s+(?:message|e-?mail|document|page|text))\b"
            r"|\bwhen\s+you\s+(?:read|process|summari[sz]e|see|parse|analy[sz]e)\s+this\b"
            r"|\[(?:assistant|ai|system|model)\s+(?:directive|instruction|note|override|message)s?\]"
            r"|(?:^|[.!?]\s+|,\s*)(?:dear\s+)?(?:ai\s+)?(?:ai|assistant|chatbot|llm|gpt)\s*[,:]\s+"
            r"(?:please\s+)?"
            r"(?:ignore|disregard|forget|reply\s+only|respond\s+only|output|reveal|call|send|forward"
            r"|append|include|recommend|state\s+that|do\s+not|don'?t|stop|from\s+now\s+on"
            r"|new\s+instructions)\b",
            _I,
        ),
    ),
    Heuristic(
        "tell_the_user",
        re.compile(
            r"\b(?:tell|inform|instruct|convince|persuade|urge)\s+(?:the\s+)?(?:user|reader"
            r"|customer|human)s?\s+(?:to|that)\b|\b(?:do\s+not|don'?t|never)\s+(?:tell|inform"
            r"|mention|reveal|disclose)\b[^.!?\n]{0,20}?\b(?:the\s+)?(?:user|human)\b",
            _I,
        ),
    ),
    Heuristic(
        "authority_override",
        re.compile(
            r"\b(?:administrator|admin|system|developer|sudo|root|security)\s+override\b"
            r"|\bi\s+am\s+your\s+(?:developer|administrator|admin|creator|owner|programmer)\b"
            r"|\bi\s+am\s+(?:an?|the)\s+(?:openai|anthropic)\s+(?:employee|engineer|staff)\b"
            r"|\b(?:openai|anthropic)\s+(?:staff|employees?|engineers?|team|developers?)\s+here\b",
            _I,
        ),
    ),
    Heuristic(
        "skip_approval",
        re.compile(
            r"\b(?:bypass|skip|circumvent|avoid|ignore)\s+(?:the\s+|any\s+)?(?:approval|confirmation"
            r"|human\s+review|authori[sz]ation)\b|\bwithout\s+(?:asking|waiting|requesting|getting)"
            r"\s+(?:the\s+user\s+)?(?:for\s+)?(?:approval|confirmation|permission)\b"
            r"|\b(?:do\s+not|don'?t|never)\s+ask\s+(?:the\s+user\s+)?for\s+(?:approval"
            r"|confirmation|permission)\b",
            _I,
        ),
    ),
    Heuristic(
        "exfiltration",
        re.compile(
            r"!\[[^\]\n]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=|\b(?:send|forward|post|upload"
            r"|email|leak)\b[^.!?\n]{0,40}?\b(?:conversation|chat\s+history|previous\s+messages"
            r"|user'?s?\s+(?:data|messages|details)|customer\s+(?:records|data))\b[^.!?\n]{0,30}?"
            r"\bto\s+(?:https?://|\S+@)",
            _I,
        ),
    ),
    Heuristic(
        "encoded_payload",
        re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"),
        check=_mixed_base64,
    ),
)


def _in_other_languages(heuristic: Heuristic) -> Heuristic:
    """``heuristic`` with its phrasings in other languages (``injection_languages``) added."""
    if heuristic.name not in EXTRA:
        return heuristic
    anchors, pattern = EXTRA[heuristic.name]
    other = re.compile(pattern, heuristic.pattern.flags)
    return replace(heuristic, other_languages=other, anchors=anchors)


HEURISTICS = tuple(_in_other_languages(h) for h in HEURISTICS)
HEURISTIC_NAMES: tuple[str, ...] = tuple(h.name for h in HEURISTICS)

# In a document (a retrieved chunk, a tool result) these patterns are orders addressed to the
# AI that reads it, and flag the text whatever the classifier says. The others (personas, "no
# restrictions", secrets, base64 runs...) also occur in ordinary documents and only count
# through the classifier there.
DOCUMENT_HEURISTICS: frozenset[str] = frozenset(
    {
        "ignore_previous_instructions",
        "forget_everything",
        "reveal_system_prompt",
        "fake_delimiter",
        "new_instructions",
        "indirect_address",
        "tell_the_user",
        "authority_override",
        "skip_approval",
        "exfiltration",
        "developer_mode",
    }
)


def normalise(text: str) -> str:
    """What the heuristics read: NFKC (full-width letters become ASCII), no zero-width marks."""
    return unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)


_SPACED = re.compile(r"\b[A-Za-z]([ .\-_*])[A-Za-z](?:\1[A-Za-z]\b){2,}")
_SEPARATORS = re.compile(r"[ .\-_*]")
_LEET = str.maketrans("0134578@$", "oieastbas")
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[\w@$]*[A-Za-z])(?=[\w@$]*[0-9@$])[\w@$]{3,}")


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
_ROT13_HINT = re.compile(r"\brot-?13\b", _I)


def _decoded_base64(text: str, limit: int = 16) -> list[str]:
    """The readable text hidden in base64 runs (at most ``limit`` runs are tried)."""
    found = []
    for m in itertools.islice(_BASE64_RUN.finditer(text), limit):
        blob = m.group(0)
        if not _mixed_base64(blob):
            continue
        try:
            plain = base64.b64decode(blob + "=" * (-len(blob.rstrip("=")) % 4), validate=False)
            decoded = plain.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if decoded and sum(c.isprintable() or c.isspace() for c in decoded) >= 0.95 * len(decoded):
            found.append(decoded)
    return found


def deobfuscate(text: str) -> str:
    """Undo the cheap disguises: spaced or dotted letters (``i g n o r e``), leetspeak
    (``1gn0r3``), base64 runs (decoded and appended) and ROT13 when the text mentions it.
    Only the heuristics read this; the embedding sees the text as written."""
    extra = _decoded_base64(text)
    if _ROT13_HINT.search(text):
        extra.append(codecs.encode(text, "rot13"))
    text = _SPACED.sub(lambda m: _SEPARATORS.sub("", m.group(0)), text)
    text = _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), text)
    return "\n".join([text, *extra])


def heuristic_reasons(text: str) -> tuple[str, ...]:
    """Names of the heuristics that match ``text`` (as written or de-obfuscated), in
    :data:`HEURISTICS` order."""
    clean = normalise(text)
    plain = deobfuscate(clean)
    views = (clean,) if plain == clean else (clean, plain)
    return tuple(h.name for h in HEURISTICS if any(h.matches(v) for v in views))


def heuristic_vector(reasons: Sequence[str]) -> list[float]:
    """0/1 indicators in :data:`HEURISTICS` order."""
    found = set(reasons)
    return [1.0 if name in found else 0.0 for name in HEURISTIC_NAMES]


def windows(text: str) -> list[str]:
    """The pieces of ``text`` that are embedded: itself, or overlapping windows when long.

    Windows are ``WINDOW`` characters apart by about ``STRIDE``; when more than ``MAX_WINDOWS``
    would be needed they are spread evenly so the first and the last characters are still read
    (the heuristics cover the whole text either way).
    """
    n = len(text)
    if n <= LONG_TEXT:
        return [text]
    count = min(MAX_WINDOWS, math.ceil((n - WINDOW) / STRIDE) + 1)
    last = n - WINDOW
    starts = [round(i * last / (count - 1)) for i in range(count)]
    return [text[s : s + WINDOW] for s in starts]


def feature_matrix(
    vectors: FloatArray, flags: FloatArray, lengths: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Rows of ``[embedding, heuristic indicators, log(1 + window length)]``."""
    import numpy as np

    length = np.log1p(np.asarray(lengths, dtype=np.float64)).reshape(-1, 1)
    return np.hstack(
        [np.asarray(vectors, dtype=np.float64), np.asarray(flags, dtype=np.float64), length]
    )


def window_probabilities(
    features: FloatArray,
    weights: FloatArray,
    bias: float,
    extra: FloatArray | None = None,
) -> npt.NDArray[np.float64]:
    """The logistic model's probability for each feature row; ``extra`` (one value per row)
    is added to the linear score (the character n-gram block's share)."""
    import numpy as np

    z = np.asarray(features, dtype=np.float64) @ np.asarray(weights, dtype=np.float64) + bias
    if extra is not None:
        z = z + np.asarray(extra, dtype=np.float64)
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, overflow-free
    return out


@dataclass(frozen=True, eq=False)
class CharNgrams:
    """The hashed character n-gram block of the model: which n-grams (``ngram_range``,
    ``n_features`` hash buckets, ``char_wb``: n-grams inside word boundaries, l2-normalised
    counts, no alternating sign) of each NFKC-normalised, lower-cased window, and the weight of
    every bucket (buckets that never occur in training weigh 0)."""

    ngram_range: tuple[int, int]
    n_features: int
    weights: Any  # numpy float64 vector of n_features

    @classmethod
    def from_data(cls, block: dict[str, Any]) -> CharNgrams:
        """Read the ``model.char_ngrams`` block of a weights file: the weights, rounded to
        ``10**-decimals``, as little-endian int32 multiples of that unit, zlib-compressed and
        base64-encoded (``encode_weights``)."""
        import zlib

        import numpy as np

        settings = (block.get("analyzer"), block.get("norm"), block.get("lowercase"))
        if settings != ("char_wb", "l2", True) or block.get("encoding") != _NGRAM_ENCODING:
            raise ConfigError(f"unsupported character n-gram block {settings}")
        low, high = (int(v) for v in block["ngram_range"])
        n = int(block["n_features"])
        try:
            raw = zlib.decompress(base64.b64decode(block["weights"], validate=True))
        except (binascii.Error, zlib.error) as exc:
            raise ConfigError(f"the character n-gram weights cannot be decoded: {exc}") from exc
        units = np.frombuffer(raw, dtype="<i4")
        if units.size != n:
            raise ConfigError(f"the character n-gram block has {units.size} weights, not {n}")
        weights = units.astype(np.float64) / 10.0 ** int(block["decimals"])
        return cls((low, high), n, weights)

    @staticmethod
    def encode_weights(weights: Any, decimals: int) -> str:
        """The inverse of :meth:`from_data`'s decoding (used by the training script)."""
        import zlib

        import numpy as np

        units = np.rint(np.asarray(weights, dtype=np.float64) * 10.0**decimals).astype("<i4")
        return base64.b64encode(zlib.compress(units.tobytes(), 9)).decode("ascii")

    @functools.cached_property
    def vectorizer(self) -> Any:
        return char_ngram_vectorizer(self.ngram_range, self.n_features)

    def logits(self, pieces: Sequence[str]) -> npt.NDArray[np.float64]:
        """This block's share of the linear score of each window."""
        import numpy as np

        out: npt.NDArray[np.float64] = np.asarray(
            self.vectorizer.transform([normalise(p) for p in pieces]) @ self.weights,
            dtype=np.float64,
        )
        return out


def char_ngram_vectorizer(ngram_range: tuple[int, int], n_features: int) -> Any:
    """scikit-learn's ``HashingVectorizer`` as the detector uses it (imported here, lazily)."""
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        analyzer="char_wb",
        ngram_range=ngram_range,
        n_features=n_features,
        alternate_sign=False,
        norm="l2",
        lowercase=True,
        dtype=np.float64,
    )


def text_scores(
    texts: Sequence[str],
    pieces: Sequence[Sequence[str]],
    vectors: FloatArray,
    weights: FloatArray,
    bias: float,
    reasons: Sequence[Sequence[str]] | None = None,
    ngrams: CharNgrams | None = None,
) -> npt.NDArray[np.float64]:
    """Each text's score: the highest probability among its windows.

    ``pieces[i]`` are the windows of ``texts[i]``; ``vectors`` has one row per window, in
    order. Heuristics (computed here unless ``reasons`` is given) are those of the full text;
    ``ngrams`` (the model's character n-gram block, if it has one) reads each window.
    """
    import numpy as np

    if reasons is None:
        reasons = [heuristic_reasons(t) for t in texts]
    counts = [len(p) for p in pieces]
    owner = np.repeat(np.arange(len(texts)), counts)
    flags = np.asarray([heuristic_vector(r) for r in reasons], dtype=np.float64)
    flags = flags.reshape(len(texts), len(HEURISTICS))[owner]
    lengths = [len(w) for p in pieces for w in p]
    extra = ngrams.logits([w for p in pieces for w in p]) if ngrams is not None else None
    probs = window_probabilities(feature_matrix(vectors, flags, lengths), weights, bias, extra)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    out: npt.NDArray[np.float64] = np.maximum.reduceat(probs, starts)
    return out


def flags_document(result: InjectionResult, threshold: float) -> bool:
    """The decision for a document (retrieved chunk, tool result): the score is at or over
    ``threshold``, or an order addressed to the AI (:data:`DOCUMENT_HEURISTICS`) matched."""
    return result.score >= threshold or not DOCUMENT_HEURISTICS.isdisjoint(result.reasons)


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read injection detector weights {path}: {exc}") from exc
    if data.get("format") not in READABLE_FORMATS:
        raise ConfigError(f"{path}: unsupported weights format {data.get('format')!r}")
    if (data["format"] >= 2) != ("char_ngrams" in data.get("model", {})):
        raise ConfigError(
            f"{path}: weights format {data['format']} "
            + ("needs" if data["format"] >= 2 else "cannot have")
            + " a character n-gram block (model.char_ngrams)"
        )
    if tuple(data.get("heuristics", ())) != HEURISTIC_NAMES:
        raise ConfigError(
            f"{path} was trained with other heuristics than this keel version has; "
            "retrain with scripts/train_injection_detector.py"
        )
    return data


def load_weights(path: Path | None = None) -> dict[str, Any]:
    """The detector's weights file (cached per path); the shipped one by default."""
    return _load(str(Path(path or WEIGHTS_PATH).resolve()))


@dataclass(frozen=True)
class InjectionResult:
    score: float  # probability-like, 0..1
    flagged: bool
    threshold: float
    reasons: tuple[str, ...]  # names of heuristics that matched


class InjectionDetector:
    """Scores user questions, retrieved chunks and tool results for prompt injection.

    ``threshold`` (0..1) overrides the operating point; otherwise ``fpr`` picks one of the
    thresholds chosen at training time (0.01 or 0.03 false positive rate on validation data).
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        threshold: float | None = None,
        fpr: float = 0.03,
        weights: Path | None = None,
    ) -> None:
        import numpy as np

        data = load_weights(weights)
        if data["embedding_model"] != embedder.model_id:
            raise ConfigError(
                f"the injection detector was trained on {data['embedding_model']} embeddings, "
                f"not {embedder.model_id}"
            )
        thresholds: dict[str, float] = data["thresholds"]
        if threshold is None:
            key = _fpr_key(fpr)
            if key not in thresholds:
                raise ConfigError(
                    f"no injection threshold for fpr={fpr}; choose one of "
                    f"{', '.join(sorted(thresholds))} or pass threshold="
                )
            threshold = float(thresholds[key])
        elif not 0.0 < threshold < 1.0:
            raise ConfigError(f"injection threshold must be between 0 and 1, not {threshold}")
        self.embedder = embedder
        self.threshold = float(threshold)
        self.thresholds = {k: float(v) for k, v in thresholds.items()}
        self._data = data
        self._weights = np.asarray(data["model"]["weights"], dtype=np.float64)
        self._bias = float(data["model"]["bias"])
        self._dimension = int(data["features"]["embedding"])
        block = data["model"].get("char_ngrams")
        self._ngrams = CharNgrams.from_data(block) if block is not None else None
        if self._ngrams is not None:
            _ = self._ngrams.vectorizer  # imports scikit-learn now, not in the first request

    def threshold_for(self, fpr: float | None = None, *, documents: bool = False) -> float:
        """The shipped operating point: for documents (retrieved chunks, tool results) the
        ``context`` threshold, else the one for ``fpr`` (default: this detector's)."""
        if documents and fpr is None:
            if "context" not in self.thresholds:
                raise ConfigError(
                    "the injection detector's weights have no context threshold; retrain with "
                    "scripts/train_injection_detector.py or set threshold= on the rule"
                )
            return self.thresholds["context"]
        if fpr is None:
            return self.threshold
        key = _fpr_key(fpr)
        if key not in self.thresholds:
            raise ConfigError(
                f"no injection threshold for fpr={fpr}; choose one of "
                f"{', '.join(sorted(k for k in self.thresholds if k != 'context'))} "
                "or set threshold="
            )
        return self.thresholds[key]

    @property
    def metadata(self) -> dict[str, Any]:
        """Training information from the weights file (without the weights themselves)."""
        return copy.deepcopy({k: v for k, v in self._data.items() if k != "model"})

    def score(self, text: str, embedding: np.ndarray[Any, Any] | None = None) -> InjectionResult:
        """Score one text. A short text's vector is ``embedding`` when given, else the
        embedder's cached ``embed_query(text)`` (shared with retrieval). A text longer than
        ``LONG_TEXT`` characters is read in windows, embedded with one ``encode`` call; a
        given ``embedding`` is then not used (it covers only the first 256 tokens)."""
        import numpy as np

        pieces = windows(text)
        if len(pieces) == 1:
            vector = embedding if embedding is not None else self.embedder.embed_query(text)
            vectors = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        else:
            vectors = self.embedder.encode(pieces)
        return self._results([text], [pieces], vectors)[0]

    def score_many(self, texts: Sequence[str]) -> list[InjectionResult]:
        """Score many texts (retrieved chunks, tool results): every window of every text
        goes through one ``embedder.embed_documents`` call, so a window seen before (a
        popular chunk; a chunk short enough to be one window has its vector from ingestion)
        comes from the embedding cache instead of the model (this was 175 ms of a turn)."""
        if not texts:
            return []
        pieces = [windows(t) for t in texts]
        vectors = self.embedder.embed_documents([w for p in pieces for w in p])
        return self._results(texts, pieces, vectors)

    def _results(
        self, texts: Sequence[str], pieces: Sequence[Sequence[str]], vectors: FloatArray
    ) -> list[InjectionResult]:
        if vectors.ndim != 2 or vectors.shape[1] != self._dimension:
            raise ConfigError(
                f"the injection detector expects {self._dimension}-dimensional embeddings, "
                f"got shape {tuple(vectors.shape)}"
            )
        reasons = [heuristic_reasons(t) for t in texts]
        scores = text_scores(
            texts, pieces, vectors, self._weights, self._bias, reasons, self._ngrams
        )
        return [
            InjectionResult(
                score=float(s),
                flagged=bool(s >= self.threshold),
                threshold=self.threshold,
                reasons=r,
            )
            for s, r in zip(scores, reasons, strict=True)
        ]


def _fpr_key(fpr: float) -> str:
    return f"{fpr:g}"
