"""The docs' tutorial (docs/guides/releases.md: serve, feedback, export, eval, release,
canary, promote) runs as written: its bash block is executed in a copy of the example app
with a real gateway."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel.testing import unused_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "releases.md"


def tutorial() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("## Tutorial: the whole loop") :]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found is not None, "the tutorial has a bash block"
    return found.group(1)


@pytest.mark.slow
def test_the_docs_tutorial_runs(tmp_path: Path, model_cache_dir: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the tutorial uses curl, which is not installed")
    shutil.copytree(
        ROOT / "examples",
        tmp_path / "examples",
        ignore=shutil.ignore_patterns(".keel", "__pycache__"),
    )
    cases_before = (tmp_path / "examples/support_bot/evals/cases.jsonl").read_text()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(unused_port()),
        "KEEL_CACHE_DIR": str(model_cache_dir),
        "KEEL_GIT_COMMIT": "tutorial",
    }
    for name in ("KEEL_CONFIG", "KEEL_DATA_DIR", "KEEL_DATABASE_URL", "KEEL_CHROMA_URL"):
        env.pop(name, None)
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + tutorial()
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    app_dir = tmp_path / "examples/support_bot"
    # the feedback came back as a case with its provenance
    cases = app_dir.joinpath("evals/cases.jsonl").read_text()
    added = [json.loads(line) for line in cases[len(cases_before) :].splitlines() if line]
    assert len(added) == 1 and added[0]["input"] == "Can I get my notes out as files?"
    assert added[0]["reference"] == "Yes: Settings > Data > Export."
    assert added[0]["provenance"]["trace_id"]
    assert (app_dir / "eval-report.html").is_file()
    # two releases; the second was canaried, then promoted
    deployment = json.loads(
        next(line for line in done.stdout.splitlines() if line.startswith('{"stable"'))
    )
    assert deployment["canary"] and deployment["weight"] == 0.2
    health = deployment["health"]
    assert sum(h["requests"] for h in health.values()) >= 20
    assert "promoted" in done.stderr
    assert re.search(r"rel-[0-9a-f]{12} .* stable", done.stdout)
