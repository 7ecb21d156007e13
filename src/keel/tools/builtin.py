"""Built-in tools: a safe calculator, knowledge search and a locked-down HTTP GET.

``calculator`` is a ready tool (an ``@tool`` function). The others need configuration and are
made by factories: :func:`make_search_knowledge` around a retriever's search function, and
:func:`make_http_get`, which is off unless an app configures it with the hosts it may reach.
"""

from __future__ import annotations

import ast
import codecs
import ipaddress
import math
import operator
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from keel.errors import ConfigError, UsageError
from keel.rag.types import Hit
from keel.tools.registry import Tool, tool

if TYPE_CHECKING:
    import httpx

# --------------------------------------------------------------------------------------------
# calculator

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_INT_BITS = 4000  # about 1200 decimal digits
_MAX_ROUND_DIGITS = 100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > _MAX_ROUND_DIGITS:
        raise UsageError(f"round() takes a whole number of digits up to {_MAX_ROUND_DIGITS}")
    return round(x, ndigits)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, 100),
    "max": (lambda *xs: max(xs), 1, 100),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
    "exp": (math.exp, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}


class _Unsupported(Exception):
    pass


def _number(value: Any) -> int | float:
    """Check an intermediate result: a real, finite number of bounded size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, complex):
            raise UsageError("the result is not a real number")
        raise UsageError("the result is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise UsageError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError("the result is too large")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise UsageError(f"exponent too large: at most {MAX_EXPONENT} in magnitude")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base).bit_length() * exponent > MAX_INT_BITS + exponent
    ):
        raise UsageError("the result is too large")
    return _number(base**exponent)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Unsupported(f"the literal {value!r}")
        return _number(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if (
            isinstance(node.op, ast.Mult)
            and isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
        ):
            raise UsageError("the result is too large")
        return _number(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise _Unsupported("'^' (write powers as **)")
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise _Unsupported(f"the name {node.id!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise _Unsupported("calling anything but " + ", ".join(_FUNCTIONS))
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _Unsupported("keyword or starred arguments")
        func, least, most = _FUNCTIONS[node.func.id]
        if not least <= len(node.args) <= most:
            count = str(least) if least == most else f"{least} to {most}"
            raise UsageError(f"{node.func.id}() takes {count} argument(s)")
        args = [_evaluate(a) for a in node.args]
        return _number(func(*args))
    kind = type(node).__name__
    raise _Unsupported(_NODE_NAMES.get(kind, f"{kind} syntax"))


_NODE_NAMES = {
    "Attribute": "attribute access",
    "Subscript": "indexing",
    "Lambda": "a lambda",
    "ListComp": "a comprehension",
    "SetComp": "a comprehension",
    "DictComp": "a comprehension",
    "GeneratorExp": "a comprehension",
    "Compare": "a comparison",
    "BoolOp": "and/or",
    "IfExp": "a conditional expression",
    "NamedExpr": "assignment",
    "JoinedStr": "a string",
    "List": "a list",
    "Tuple": "a tuple",
    "Dict": "a dict",
    "Set": "a set",
}


def evaluate_expression(expression: str) -> int | float:
    """Evaluate arithmetic with the ``ast`` module (never ``eval``); ``UsageError`` otherwise."""
    if not isinstance(expression, str) or not expression.strip():
        raise UsageError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UsageError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UsageError("invalid expression: not valid arithmetic syntax") from exc
    try:
        return _evaluate(tree)
    except _Unsupported as exc:
        raise UsageError(f"unsupported expression: {exc} is not allowed") from None
    except ZeroDivisionError:
        raise UsageError("division by zero") from None
    except OverflowError:
        raise UsageError("the result is too large") from None
    except RecursionError:
        raise UsageError("expression nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"math error: {exc}") from None


def format_number(value: int | float) -> str:
    """An int exactly; a float with 12 significant digits (no ``0.30000000000000004``)."""
    if isinstance(value, int):
        return repr(value)
    return format(value, ".12g")


@tool(examples=("what is 15% of 2340", "calculate (1200 - 150) * 0.2", "square root of 2"))
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result; use it instead of doing math
    in your head.

    Args:
        expression: The expression, e.g. ``(1200 - 150) * 0.2`` or ``sqrt(2) / 3``. Numbers,
            + - * / // % ** and parentheses, the functions abs, round, min, max, sqrt, log,
            exp, floor, ceil and the constants pi and e.
    """
    return format_number(evaluate_expression(expression))


# --------------------------------------------------------------------------------------------
# search_knowledge


def format_hits(hits: Sequence[Hit]) -> str:
    """Hits as numbered passages: ``[1] docs/billing.md (Billing > Refunds): text``."""
    if not hits:
        return "No relevant passages found."
    parts: list[str] = []
    for number, hit in enumerate(hits, start=1):
        where = hit.source or hit.doc_id
        if hit.page:
            where += f", page {hit.page}"
        section = " > ".join(h for h in hit.headings if h) or hit.title
        label = f"{where} ({section})" if section else where
        parts.append(f"[{number}] {label}: {hit.text.strip()}")
    return "\n\n".join(parts)


def make_search_knowledge(search: Callable[[str, int], list[Hit]]) -> Tool:
    """The ``search_knowledge`` tool over ``search(query, k)`` (e.g. a retriever's search)."""

    def search_knowledge(
        query: Annotated[str, Field(min_length=1, max_length=2000)],
        k: Annotated[int, Field(ge=1, le=20)] = 5,
    ) -> str:
        """Search the knowledge base (the app's documents) and return the most relevant
        passages with their source.

        Args:
            query: What to look for, in natural language.
            k: How many passages to return, 1 to 20.
        """
        return format_hits(search(query, k))

    return Tool.from_function(
        search_knowledge,
        examples=("search the documentation", "what do the docs say about this"),
    )


# --------------------------------------------------------------------------------------------
# http_get

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_TEXT_TYPES = ("application/json", "application/xml")
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})?(\.[a-z0-9]([a-z0-9-]{0,62})?)*$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Iterable[Sequence[Any]]]


def is_denied_by_default(ip: IPAddress) -> bool:
    """Not a public unicast address: private, loopback, link-local, multicast, reserved,
    unspecified or otherwise not global (also through IPv4-mapped/6to4 IPv6 forms)."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in (ip.ipv4_mapped, ip.sixtofour):
            if embedded is not None:
                candidates.append(embedded)
    return any(
        a in METADATA_ADDRESSES
        or a.is_private
        or a.is_loopback
        or a.is_link_local
        or a.is_multicast
        or a.is_reserved
        or a.is_unspecified
        or not a.is_global
        for a in candidates
    )


@dataclass(frozen=True)
class _HostRule:
    host: str  # lowercase ASCII; "*.example.com" matches subdomains only
    port: int | None  # None: the scheme's default port only

    def matches(self, host: str, port: int, default_port: int) -> bool:
        if (self.port if self.port is not None else default_port) != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def _normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.isascii():
        return host
    return host.encode("idna").decode("ascii")


def _parse_rule(entry: str) -> _HostRule:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"allowed_hosts entry {entry!r} is not a host name")
    text = entry.strip().lower()
    if "/" in text or "@" in text:
        raise ConfigError(f"allowed_hosts entry {entry!r}: give a host (or host:port), not a URL")
    port_text = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"allowed_hosts entry {entry!r} has an invalid port")
        port = int(port_text)
    wildcard = host.startswith("*.")
    bare = host[2:] if wildcard else host
    try:
        bare = _normalise_host(bare)
    except UnicodeError as exc:
        raise ConfigError(f"allowed_hosts entry {entry!r} is not a valid host name") from exc
    if not _is_ip(bare) and not _HOST_RE.match(bare):
        raise ConfigError(f"allowed_hosts entry {entry!r} is not a valid host name")
    return _HostRule(("*." + bare) if wildcard else bare, port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _media_type_allowed(media: str) -> bool:
    return (
        media.startswith("text/")
        or media in _TEXT_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def make_http_get(
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int = 1_000_000,
    timeout_s: float = 10.0,
    resolver: Resolver = socket.getaddrinfo,
    deny_networks: Sequence[str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Tool:
    """The ``http_get`` tool, limited to ``allowed_hosts`` (``host``, ``host:port`` or
    ``*.example.com``).

    The host is resolved once with ``resolver`` (``socket.getaddrinfo``'s signature); if any
    address is not public (see :func:`is_denied_by_default`, or the CIDR networks in
    ``deny_networks`` when given) the call is refused. The request then goes to that IP
    address itself, with the ``Host`` header and (https) the SNI/certificate name of the host,
    so DNS cannot change the target in between. Redirects are reported, not followed; the body
    is cut at ``max_bytes``; only text, JSON and XML are returned. Cloud metadata addresses
    are always refused. ``transport`` replaces httpx's network transport (tests).
    """
    if isinstance(allowed_hosts, str) or not allowed_hosts:
        raise ConfigError("http_get needs allowed_hosts: a list of host names it may reach")
    rules = [_parse_rule(h) for h in allowed_hosts]
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigError(f"timeout_s must be a positive number, got {timeout_s!r}")
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
    if deny_networks is not None:
        if isinstance(deny_networks, str):
            raise ConfigError("deny_networks must be a list of networks, not a single string")
        try:
            networks = [ipaddress.ip_network(n, strict=False) for n in deny_networks]
        except ValueError as exc:
            raise ConfigError(f"deny_networks: {exc}") from exc

    def denied(ip: IPAddress) -> bool:
        if ip in METADATA_ADDRESSES:
            return True
        if networks is None:
            return is_denied_by_default(ip)
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        return any(a in n for a in forms for n in networks if a.version == n.version)

    def http_get(
        url: Annotated[
            str,
            Field(min_length=1, max_length=2048, description="The http:// or https:// URL."),
        ],
    ) -> str:
        """Fetch a web page or API response with HTTP GET and return its text."""
        target, host, port, scheme = _check_url(url, rules)
        ip = _resolve_once(host, port, resolver, denied)
        return _fetch(
            target=target,
            host=host,
            port=port,
            scheme=scheme,
            ip=ip,
            max_bytes=max_bytes,
            timeout_s=float(timeout_s),
            transport=transport,
        )

    shown = ", ".join(allowed_hosts)
    return Tool.from_function(
        http_get,
        description=(
            "Fetch a web page or API response with HTTP GET and return its text (text, JSON "
            f"or XML only, at most {max_bytes} bytes; redirects are not followed). "
            f"Allowed hosts: {shown}."
        ),
        timeout_s=float(timeout_s) + 5.0,
        examples=("fetch the page at https://", "get the URL"),
    )


def _check_url(url: str, rules: list[_HostRule]) -> tuple[Any, str, int, str]:
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UsageError("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(f"only http and https URLs are allowed, not {scheme or 'no scheme'!r}")
        if "@" in parts.netloc:
            raise UsageError("URLs with user information (user:password@) are not allowed")
        raw_host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise UsageError(f"the URL is not valid: {exc}") from None
    try:
        host = _normalise_host(raw_host)
    except UnicodeError:
        raise UsageError(f"the host {raw_host!r} is not a valid host name") from None
    if not host or (not _is_ip(host) and not _HOST_RE.match(host)):
        raise UsageError(f"the host {raw_host!r} is not a valid host name")
    default_port = 443 if scheme == "https" else 80
    if not any(rule.matches(host, port, default_port) for rule in rules):
        shown = host if port == default_port else f"{host}:{port}"
        raise UsageError(f"host {shown!r} is not in the allowed hosts")
    return parts, host, port, scheme


def _resolve_once(
    host: str, port: int, resolver: Resolver, denied: Callable[[IPAddress], bool]
) -> IPAddress:
    if _is_ip(host):
        addresses = [ipaddress.ip_address(host)]
    else:
        try:
            infos = list(resolver(host, port, 0, socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            raise UsageError(f"cannot resolve host {host!r}: {exc}") from None
        addresses = []
        for info in infos:
            try:
                ip = ipaddress.ip_address(str(info[4][0]))
            except (ValueError, IndexError, TypeError):
                continue
            if ip not in addresses:
                addresses.append(ip)
    if not addresses:
        raise UsageError(f"cannot resolve host {host!r}: no addresses")
    blocked = [a for a in addresses if denied(a)]
    if blocked:
        raise UsageError(f"host {host!r} resolves to a non-public address ({blocked[0]}); refused")
    return addresses[0]


def _fetch(
    *,
    target: Any,
    host: str,
    port: int,
    scheme: str,
    ip: IPAddress,
    max_bytes: int,
    timeout_s: float,
    transport: httpx.BaseTransport | None,
) -> str:
    import httpx

    default_port = 443 if scheme == "https" else 80
    ip_text = f"[{str(ip).replace('%', '%25')}]" if ip.version == 6 else str(ip)
    url = urlunsplit((scheme, f"{ip_text}:{port}", target.path or "/", target.query, ""))
    host_text = f"[{host}]" if ":" in host else host
    headers = {
        "Host": host_text if port == default_port else f"{host_text}:{port}",
        "User-Agent": "keel-http-get/1",
        "Accept": "text/*, application/json, application/xml;q=0.9",
    }
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    deadline = time.monotonic() + timeout_s
    own = transport is None
    client = httpx.Client(
        transport=httpx.HTTPTransport(retries=0) if own else transport,
        follow_redirects=False,
        timeout=timeout_s,
        trust_env=False,  # no proxies from the environment: they would undo the IP pinning
    )
    try:
        with client.stream("GET", url, headers=headers, extensions=extensions) as response:
            status = response.status_code
            if 300 <= status < 400:
                location = response.headers.get("location", "(no Location header)")
                raise UsageError(
                    f"HTTP {status}: the server redirects to {location}; redirects are not "
                    "followed (fetch that URL instead if its host is allowed)"
                )
            if status >= 400:
                raise UsageError(f"HTTP {status} {response.reason_phrase}".strip())
            media = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not _media_type_allowed(media):
                raise UsageError(
                    f"unsupported content type {media or '(none)'}: only text, JSON and XML "
                    "are returned"
                )
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise UsageError(f"response larger than {max_bytes} bytes")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise UsageError(f"response larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise UsageError(f"the response took longer than {timeout_s:g} s")
            charset = response.charset_encoding or "utf-8"
    finally:
        if own:
            client.close()
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return bytes(body).decode(charset, errors="replace")


__all__ = [
    "METADATA_ADDRESSES",
    "calculator",
    "evaluate_expression",
    "format_hits",
    "format_number",
    "is_denied_by_default",
    "make_http_get",
    "make_search_knowledge",
]
