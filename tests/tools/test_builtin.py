"""Built-in tools: calculator (safe arithmetic), search_knowledge, http_get (SSRF-hardened).

The http_get tests never leave the machine: a local ``http.server`` on 127.0.0.1 stands in for
the web, a fake resolver maps test host names to addresses, and ``httpx.MockTransport`` records
what would have been sent when the call must be refused before any connection.
"""

from __future__ import annotations

import ast
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import keel.tools.builtin as builtin
from keel.errors import ConfigError, UsageError
from keel.rag.types import Hit
from keel.tools import (
    RunBudget,
    Tool,
    ToolCall,
    ToolOutcome,
    ToolPolicy,
    Toolset,
    calculator,
    get_tool,
    make_http_get,
    make_search_knowledge,
)


def call(t: Tool, **args: Any) -> ToolOutcome:
    return ToolPolicy(Toolset([t])).execute_sync(ToolCall("c1", t.name, args), RunBudget())


# --- calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("0.1 + 0.2", "0.3"),
        ("10 / 4", "2.5"),
        ("10 / 2", "5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -2", "0.25"),
        ("-(3 - 5)", "2"),
        ("+4", "4"),
        ("sqrt(2)", "1.41421356237"),
        ("abs(-3.5) + round(2.567, 2)", "6.07"),
        ("round(7.5)", "8"),
        ("min(4, 2, 9) + max(1, 3)", "5"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log(e) + log(8, 2)", "4"),
        ("exp(0)", "1"),
        ("2 * pi", "6.28318530718"),
        ("1e3 + 0x10", "1016"),
        ("(1200 - 150) * 0.2", "210"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("10 ** 1000 // 10 ** 998", "100"),
    ],
)
def test_calculator_computes(expression: str, expected: str) -> None:
    assert calculator(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "unsupported expression"),
        ("__import__('os').system('echo hi')", "unsupported expression"),
        ("().__class__", "unsupported expression"),
        ("().__class__.__bases__[0].__subclasses__()", "unsupported expression"),
        ("open('/etc/passwd')", "unsupported expression"),
        ("eval('1')", "unsupported expression"),
        ("x + 1", "unsupported expression"),
        ("'a' * 3", "unsupported expression"),
        ("[1, 2][0]", "unsupported expression"),
        ("(lambda: 1)()", "unsupported expression"),
        ("[i for i in (1, 2)]", "unsupported expression"),
        ("1 < 2", "unsupported expression"),
        ("True + 1", "unsupported expression"),
        ("1j * 1j", "unsupported expression"),
        ("abs(x=1)", "unsupported expression"),
        ("2 ^ 3", "unsupported expression"),
        ("10**10**10", "exponent too large"),
        ("2 ** 1001", "exponent too large"),
        ("9**999 * 9**999 * 9**999 * 9**999 * 9**999", "too large"),
        ("(10**900) ** 5", "too large"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "too large"),
        ("10**400 / 3", "too large"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0.0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("sqrt(-1)", "math error"),
        ("round(1, -10**8)", "round()"),
        ("min()", "takes 1 to 100"),
        ("1 +", "invalid expression"),
        ("(" * 300 + "1" + ")" * 300, "longer than 500"),
        ("1" * 501, "longer than 500"),
        ("", "empty expression"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        calculator(expression)
    assert message in str(info.value)


def test_calculator_errors_reach_the_model_as_error_outcomes() -> None:
    t = get_tool(calculator)
    assert t.side_effects == "read" and not t.requires_approval
    assert call(t, expression="6 * 7").content == "42"
    out = call(t, expression="1/0")
    assert out.status == "error"
    assert out.content == "Tool 'calculator' failed: UsageError: division by zero"
    assert "expression" in t.parameters_schema()["required"]


def test_calculator_never_evaluates_code() -> None:
    tree = ast.parse(Path(builtin.__file__).read_text(encoding="utf-8"))
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__"}


# --- search_knowledge ----------------------------------------------------------------------------


def _hit(n: int, **kw: Any) -> Hit:
    base: dict[str, Any] = {
        "doc_id": f"d{n}",
        "chunk_id": f"c{n}",
        "text": f"  passage {n}\n",
        "score": 1.0 / n,
        "source": f"docs/{n}.md",
    }
    base.update(kw)
    return Hit(**base)


def test_search_knowledge_formats_numbered_passages() -> None:
    seen: list[tuple[str, int]] = []

    def search(query: str, k: int) -> list[Hit]:
        seen.append((query, k))
        return [
            _hit(
                1,
                source="docs/billing.md",
                headings=("Billing", "Refunds"),
                text="Refunds take 5 days.",
            ),
            _hit(2, source="docs/manual.pdf", page=3, title="Manual", text="Press reset."),
            _hit(3, source="faq.md", text="No section here."),
        ]

    t = make_search_knowledge(search)
    assert t.name == "search_knowledge" and t.side_effects == "read"
    out = call(t, query="refund time", k=3)
    assert out.ok
    assert out.content == (
        "[1] docs/billing.md (Billing > Refunds): Refunds take 5 days.\n\n"
        "[2] docs/manual.pdf, page 3 (Manual): Press reset.\n\n"
        "[3] faq.md: No section here."
    )
    assert seen == [("refund time", 3)]
    assert call(t, query="defaults").ok and seen[-1] == ("defaults", 5)


def test_search_knowledge_when_nothing_is_found_and_k_bounds() -> None:
    t = make_search_knowledge(lambda query, k: [])
    assert call(t, query="anything").content == "No relevant passages found."
    props = t.parameters_schema()["properties"]
    assert props["k"]["minimum"] == 1 and props["k"]["maximum"] == 20
    assert props["query"]["description"] == "What to look for, in natural language."
    for bad in (0, 21):
        out = call(t, query="x", k=bad)
        assert out.status == "invalid" and "- k:" in out.content
    assert call(t, query="").status == "invalid"


# --- http_get: against a local server ------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, ctype: str, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        if "no_length" not in self.path:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if self.path == "/page":
            self._send(200, "text/html; charset=utf-8", "<h1>Hællo</h1>".encode())
        elif self.path == "/data":
            self._send(200, "application/json", b'{"ok": true}')
        elif self.path == "/latin":
            self._send(200, "text/plain; charset=iso-8859-1", "café".encode("latin-1"))
        elif self.path == "/redirect":
            self._send(302, "text/plain", b"", Location="http://internal.example.test/admin")
        elif self.path in ("/big", "/big?no_length=1"):
            self._send(200, "text/plain", b"x" * 5000)
        elif self.path == "/image":
            self._send(200, "image/png", b"\x89PNG....")
        else:
            self._send(404, "text/plain", b"not here")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up early (oversize tests) is expected


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


class FakeResolver:
    """getaddrinfo's shape; answers from a table and counts the lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in self.table[host]:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            addr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            out.append((family, socket.SOCK_STREAM, 6, "", addr))
        return out


def _local_http_get(server: _Server, **kw: Any) -> tuple[Tool, FakeResolver, str]:
    port = server.server_address[1]
    resolver = FakeResolver({"docs.example.test": ["127.0.0.1"]})
    options: dict[str, Any] = {
        "allowed_hosts": [f"docs.example.test:{port}"],
        "resolver": resolver,
        "deny_networks": [],  # loopback is allowed in these tests only
    }
    options.update(kw)
    return make_http_get(**options), resolver, f"http://docs.example.test:{port}"


def test_http_get_fetches_text_from_the_pinned_address(server: _Server) -> None:
    t, resolver, base = _local_http_get(server)
    assert t.name == "http_get" and t.side_effects == "read"
    out = call(t, url=f"{base}/page#fragment")
    assert out.ok, out.content
    assert out.content == "<h1>Hællo</h1>"
    # the connection went to the resolved IP, with the original host in the Host header
    assert server.seen == [("/page", f"docs.example.test:{server.server_address[1]}")]
    assert resolver.calls == ["docs.example.test"]
    assert call(t, url=f"{base}/data").content == '{"ok": true}'
    assert call(t, url=f"{base}/latin").content == "café"


def test_http_get_does_not_follow_redirects(server: _Server) -> None:
    t, _, base = _local_http_get(server)
    out = call(t, url=f"{base}/redirect")
    assert out.status == "error"
    assert "HTTP 302" in out.content
    assert "http://internal.example.test/admin" in out.content
    assert "not followed" in out.content
    assert [path for path, _ in server.seen] == ["/redirect"]


@pytest.mark.parametrize("path", ["/big", "/big?no_length=1"])
def test_http_get_cuts_off_large_bodies(server: _Server, path: str) -> None:
    t, _, base = _local_http_get(server, max_bytes=1000)
    out = call(t, url=f"{base}{path}")
    assert out.status == "error"
    assert "response larger than 1000 bytes" in out.content


def test_http_get_returns_only_text_and_reports_http_errors(server: _Server) -> None:
    t, _, base = _local_http_get(server)
    image = call(t, url=f"{base}/image")
    assert image.status == "error" and "unsupported content type image/png" in image.content
    missing = call(t, url=f"{base}/nope")
    assert missing.status == "error" and "HTTP 404" in missing.content


def test_http_get_ports_must_be_listed(server: _Server) -> None:
    port = server.server_address[1]
    resolver = FakeResolver({"docs.example.test": ["127.0.0.1"]})
    t = make_http_get(allowed_hosts=["docs.example.test"], resolver=resolver, deny_networks=[])
    out = call(t, url=f"http://docs.example.test:{port}/page")
    assert out.status == "error"
    assert f"host 'docs.example.test:{port}' is not in the allowed hosts" in out.content
    assert resolver.calls == [] and server.seen == []


# --- http_get: refusals under the default policy (nothing is ever sent) --------------------------


class RecordingTransport(httpx.MockTransport):
    def __init__(self, body: bytes = b"hello", ctype: str = "text/plain") -> None:
        self.requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(200, headers={"Content-Type": ctype}, content=body)

        super().__init__(handler)


PUBLIC = "93.184.215.14"


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.1"],
        ["192.168.1.20"],
        ["169.254.169.254"],
        ["100.64.0.1"],
        ["0.0.0.0"],
        ["224.0.0.1"],
        ["::1"],
        ["fd00:ec2::254"],
        ["fe80::1"],
        ["::ffff:127.0.0.1"],
        [PUBLIC, "10.0.0.5"],
    ],
)
def test_default_policy_refuses_non_public_addresses(addresses: list[str]) -> None:
    transport = RecordingTransport()
    resolver = FakeResolver({"docs.example.com": addresses})
    t = make_http_get(allowed_hosts=["docs.example.com"], resolver=resolver, transport=transport)
    out = call(t, url="https://docs.example.com/guide")
    assert out.status == "error"
    assert "resolves to a non-public address" in out.content
    assert transport.requests == []


def test_ip_literals_are_checked_too() -> None:
    transport = RecordingTransport()
    resolver = FakeResolver({})
    t = make_http_get(
        allowed_hosts=["127.0.0.1", "[::1]", "169.254.169.254"],
        resolver=resolver,
        transport=transport,
    )
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/latest/meta-data"):
        out = call(t, url=url)
        assert out.status == "error" and "non-public address" in out.content, url
    assert transport.requests == []


def test_metadata_address_is_refused_even_with_an_empty_deny_list() -> None:
    transport = RecordingTransport()
    resolver = FakeResolver({"meta.example.test": ["169.254.169.254"]})
    t = make_http_get(
        allowed_hosts=["meta.example.test"],
        resolver=resolver,
        deny_networks=[],
        transport=transport,
    )
    assert "non-public address" in call(t, url="http://meta.example.test/").content
    assert transport.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://evil.example.net/", "not in the allowed hosts"),
        ("https://example.com/", "not in the allowed hosts"),
        ("https://docs.example.com.evil.net/", "not in the allowed hosts"),
        ("https://evil-example.com/", "not in the allowed hosts"),
        ("https://user:pass@docs.example.com/", "user information"),
        ("https://docs.example.com@evil.net/", "user information"),
        ("ftp://docs.example.com/file.txt", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("docs.example.com/page", "only http and https"),
        ("http://10.0.0.1/", "not in the allowed hosts"),
        ("https://docs.example.com:8443/", "not in the allowed hosts"),
        ("https://docs.example.com/a b", "spaces or control characters"),
    ],
)
def test_urls_outside_the_rules_are_refused(url: str, message: str) -> None:
    transport = RecordingTransport()
    resolver = FakeResolver({"docs.example.com": [PUBLIC], "api.example.com": [PUBLIC]})
    t = make_http_get(
        allowed_hosts=["docs.example.com", "*.example.com"], resolver=resolver, transport=transport
    )
    out = call(t, url=url)
    assert out.status == "error", url
    assert message in out.content
    assert transport.requests == [] and resolver.calls == []


def test_https_is_pinned_to_the_resolved_ip_with_sni_and_resolved_once() -> None:
    transport = RecordingTransport(body=b'{"v": 1}', ctype="application/json; charset=utf-8")
    answers = iter([[PUBLIC], ["127.0.0.1"]])  # a rebinding DNS: public first, then loopback

    def resolver(host: str, port: Any, *args: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]

    t = make_http_get(allowed_hosts=["*.example.com"], resolver=resolver, transport=transport)
    out = call(t, url="https://api.example.com/v1/items?q=1")
    assert out.ok and out.content == '{"v": 1}'
    [request] = transport.requests
    assert request.url.host == PUBLIC
    assert request.url.scheme == "https" and request.url.port is None  # 443, the default
    assert request.url.raw_path == b"/v1/items?q=1"
    assert request.headers["host"] == "api.example.com"
    assert request.extensions["sni_hostname"] == "api.example.com"
    assert next(answers) == ["127.0.0.1"]  # the second answer was never asked for


def test_http_get_description_and_configuration_errors() -> None:
    t = make_http_get(allowed_hosts=["docs.example.com", "*.example.org:8443"])
    assert "Allowed hosts: docs.example.com, *.example.org:8443" in t.description
    assert t.parameters_schema()["required"] == ["url"]
    with pytest.raises(ConfigError):
        make_http_get(allowed_hosts=[])
    with pytest.raises(ConfigError):
        make_http_get(allowed_hosts="docs.example.com")
    with pytest.raises(ConfigError, match="not a URL"):
        make_http_get(allowed_hosts=["https://docs.example.com"])
    with pytest.raises(ConfigError, match="invalid port"):
        make_http_get(allowed_hosts=["docs.example.com:99999"])
    with pytest.raises(ConfigError, match="deny_networks"):
        make_http_get(allowed_hosts=["docs.example.com"], deny_networks=["not-a-net"])
    with pytest.raises(ConfigError, match="max_bytes"):
        make_http_get(allowed_hosts=["docs.example.com"], max_bytes=0)
