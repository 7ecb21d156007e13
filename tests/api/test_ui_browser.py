"""The web console in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright): sign in, chat and watch the streamed answer with its citations and a guard event,
open a cited passage, approve a pending tool call, rate an answer, open its trace, the trace
list, eval runs and their comparison, and the releases page. Every request the browser makes
must go to the gateway on loopback (anything else is blocked and fails the test), no page
may log an error (a Content-Security-Policy violation is one), and each page is saved as a
screenshot under ``test-artifacts/ui/``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.ops.feedback import FeedbackStore
from keel.testing import ScriptedChatModel

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
QUESTION = "How long do refunds take? Reply to jane.doe@example.com"


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


class Browser:
    """One page in a fresh context that may reach only ``base``; records what it refused."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.failed: list[tuple[str, str | None]] = []
        self.answered: set[str] = set()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def goto(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"


def test_console_in_chromium(
    serve: Any,
    make_app: Callable[..., Any],
    tmp_path: Path,
    write: Callable[..., None],
    record_eval_runs: Callable[..., Any],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    call = ScriptedChatModel.tool_call
    write(
        tmp_path,
        {
            "gw_tools.py": TOOLS,
            "docs/refunds.md": "# Refunds\n\nRefunds take 30 days. Annual plans are refunded "
            "pro rata.\n",
        },
    )
    app = make_app(
        {
            "app": {"name": "console-test", "description": "Answers about refunds."},
            "tools": {"enabled": ["gw_tools"]},
            "guards": {"input": {"pii": {"on_fail": "fix"}}},
            "ui": {"enabled": True},
        },
        model=ScriptedChatModel(
            script=[
                "Refunds take 30 days [1].",
                call("refund_order", {"order_id": "A-17"}),
                "Order A-17 is refunded.",
            ]
        ),
    )
    app.ingest()
    a, _ = record_eval_runs(app.engine)
    from keel.api.keys import KeyStore

    key, _ = KeyStore(app.engine).create(
        "console", ["chat", "feedback", "traces:read", "orders:write"]
    )
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)

    with serve(app) as server, sync_playwright() as p:
        base = f"http://127.0.0.1:{server.port}"
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(60_000)  # a shared CI machine can be slow; no timed asserts
        expect.set_options(timeout=60_000)
        b = Browser(context.new_page(), base)

        def only_loopback(route: Any) -> None:
            url = route.request.url
            if url.startswith(base + "/") or url.startswith("data:"):
                route.continue_()
            else:
                b.outside.append(url)
                route.abort()

        context.route("**/*", only_loopback)
        b.page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
        b.page.on("pageerror", lambda e: b.errors.append(str(e)))
        b.page.on("requestfailed", lambda r: b.failed.append((r.url, r.failure)))
        b.page.on("response", lambda r: b.answered.add(r.url) if r.status < 400 else None)
        page = b.page

        # sign in
        page.goto(base + "/ui/playground")
        expect(page).to_have_url(f"{base}/ui/login?next=/ui/playground")
        b.shot("login")
        page.fill("#key", "keel_000000000000_" + "x" * 43)
        page.click("button[type=submit]")
        expect(page.locator(".alert")).to_have_text("Invalid or revoked API key.")
        assert [e for e in b.errors if "401 (Unauthorized)" not in e] == []  # the refused key
        b.errors.clear()
        page.fill("#key", key)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/ui/playground")
        header = page.locator("header.top")
        assert header.evaluate("e => getComputedStyle(e).display") == "flex"  # CSS loaded

        # chat: the streamed answer, a guard event inline, citations
        page.fill("#message", QUESTION)
        page.click("#send")
        first = page.locator(".msg.assistant").nth(0)
        expect(first).to_have_class("msg assistant done")
        expect(first.locator(".text")).to_have_text("Refunds take 30 days [1].")
        expect(first.locator(".guard")).to_contain_text("pii")
        cite = first.locator("a.cite")
        expect(cite).to_have_count(1)
        expect(cite).to_contain_text("[1] Refunds")
        cite.click()
        expect(page.locator("#chunk-panel")).to_be_visible()
        expect(page.locator("#chunk-text")).to_contain_text("Refunds take 30 days.")
        expect(page.locator("#chunk-source")).to_contain_text("refunds.md")
        b.shot("playground-answer")

        # feedback on that answer
        first.locator("button.thumb.down").click()
        first.locator("input.comment").fill("should mention annual plans")
        first.locator("button.send-feedback").click()
        expect(first.locator(".saved")).to_have_text("Feedback saved, thank you.")
        trace_href = first.locator("a.trace-link").get_attribute("href")
        assert trace_href is not None and trace_href.startswith("/ui/traces/")
        trace_id = trace_href.rsplit("/", 1)[1]
        stored = FeedbackStore(app.engine).all(trace_id)
        assert [(f["score"], f["comment"]) for f in stored] == [
            (0.0, "should mention annual plans")
        ]

        # a tool call that waits for approval
        page.fill("#message", "Please refund order A-17")
        page.press("#message", "Enter")
        approval = page.locator(".approval")
        expect(approval).to_contain_text('refund_order({"order_id":"A-17"})')
        b.shot("playground-approval")
        approval.locator("button.approve").click()
        resumed = page.locator(".msg.assistant").nth(2)
        expect(resumed.locator(".text")).to_have_text("Order A-17 is refunded.")
        expect(resumed.locator(".tool")).to_contain_text("refunded A-17")
        b.shot("playground-approved")

        # the trace of the first answer
        first.locator("a.trace-link").click()
        expect(page).to_have_url(base + trace_href)
        expect(page.locator("h1")).to_contain_text(trace_id)
        expect(page.locator(".waterfall")).to_contain_text("keel.turn")
        expect(page.locator(".waterfall")).to_contain_text("keel.retrieve")
        expect(page.locator(".feedback, table").last).to_contain_text("should mention annual plans")
        page.locator(".span-row summary").first.click()
        expect(page.locator(".span-row .span-detail").first).to_be_visible()
        io = page.locator(".io").inner_text()
        assert "jane.doe@example.com" not in io and "Refunds take 30 days [1]." in io
        b.shot("trace")

        # the trace list, filtered
        b.goto("/ui/traces")
        expect(page.locator("table.traces tbody tr")).to_have_count(3)
        b.shot("traces")
        page.select_option("select[name=guard]", "flagged")
        page.click(".filters button[type=submit]")
        expect(page.locator("table.traces tbody tr")).to_have_count(1)

        # eval runs: the list, a run, two runs compared
        b.goto("/ui/evals")
        b.shot("evals")
        page.click(f"a[href='/ui/evals/{a}']")
        expect(page.locator(".report h1")).to_contain_text("keel eval: smoke")
        b.shot("eval-run")
        b.goto("/ui/evals")
        page.click("text=Compare A → B")
        expect(page.locator(".summary")).to_have_text("2 case/metric pairs got worse.")
        b.shot("eval-compare")

        # releases and monitoring
        b.goto("/ui/releases")
        expect(page.locator("svg.chart")).to_have_count(4)
        b.shot("releases")

        page.click("text=Sign out")
        expect(page).to_have_url(f"{base}/ui/login")
        chromium.close()

    assert b.outside == [], f"the console tried to reach outside the gateway: {b.outside}"
    # Chromium reports a streamed Cache-Control: no-store response (the chat's event stream)
    # as ERR_ABORTED once it has been read to its end; every other failure counts.
    failed = [
        (url, why) for url, why in b.failed if not (why == "net::ERR_ABORTED" and url in b.answered)
    ]
    assert failed == [], f"requests failed: {failed}"
    assert b.errors == [], f"the pages logged errors: {b.errors}"
    assert sorted(p.name for p in ARTIFACTS.iterdir()) == sorted(
        f"{n}.png"
        for n in (
            "login",
            "playground-answer",
            "playground-approval",
            "playground-approved",
            "trace",
            "traces",
            "evals",
            "eval-run",
            "eval-compare",
            "releases",
        )
    )


TOOLS = '''
from keel.tools import tool

@tool(side_effects="write", requires_approval=True, scopes=["orders:write"])
def refund_order(order_id: str) -> str:
    """Refund an order.

    Args:
        order_id: The order id.
    """
    return f"refunded {order_id}"
'''
