"""A hostile client against the real proxy: nothing the allowlist does not permit reaches the engine.

Every request the Ollama stand-in receives is recorded; after each case we check that each
recorded request is one the allowlist permits (allowlist.decide == 0), by method and raw target.
The decision is made deliberately by refusing, not normalising: HAProxy matches the raw path and
forwards it unchanged, so what was checked is exactly what the engine routes on.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_server.access import allowlist
from ai_server.base import tomlfile
from harness import PROXY_HOST, Stack, dispose, new_stack

ALLOW = allowlist.parse(tomlfile.default_text("allowlist.toml"))


NAME = "mymac.tail1234.ts.net"


@pytest.fixture(scope="module")
def proxy() -> Iterator[Stack]:
    stack = new_stack()
    stack.write_config(stack.default_config().replace("[proxy]\n", f'[proxy]\nserver_names = ["{NAME}"]\nmax_body_mb = 1\n'))
    stack.start()
    yield stack
    dispose(stack)


def exchange(stack: Stack, raw: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the proxy closes (requests ask it to) or goes quiet."""
    with socket.create_connection((PROXY_HOST, stack.proxy_port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def statuses(response: bytes) -> list[int]:
    # Pipelined answers follow each other's bodies directly, so search rather than split lines.
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", response)]


def assert_engine_saw_only_allowed(stack: Stack) -> list[dict]:
    seen = [r for r in stack.engine_requests() if r["target"] != "/"]  # "/" is HAProxy's health check
    for record in seen:
        verdict = allowlist.decide(ALLOW, record["method"], record["target"])
        assert verdict == 0, f"engine received {record['method']} {record['target']!r} (allowlist says {verdict})"
    return seen


def req(line: str, *headers: str, body: bytes = b"", close: bool = True, host: str | None = NAME) -> bytes:
    head = [line, *([f"Host: {host}"] if host is not None else []), *headers, *(["Connection: close"] if close else [])]
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


JSON = b'{"model":"smollm2:135m","messages":[{"role":"user","content":"hi"}]}'
SMUGGLED = b"POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"

# (name, raw request, acceptable statuses of the first answer (0: no HTTP/1 answer),
#  forwarded to the engine? (None: either, as long as it is allowed))
BATTERY: list[tuple[str, bytes, set[int], bool | None]] = [
    ("allowed", req("POST /v1/chat/completions HTTP/1.1", body=JSON), {200}, True),
    ("allowed model path", req("GET /v1/models/smollm2:135m HTTP/1.1"), {200}, True),
    ("allowed hf model path", req("GET /v1/models/hf.co/org/repo:Q4_K_M HTTP/1.1"), {404}, True),
    ("allowed with query", req("POST /v1/messages?beta=true HTTP/1.1", body=JSON), {200}, True),
    ("blocked pull", req("POST /api/pull HTTP/1.1", body=b"{}"), {403}, False),
    ("blocked delete", req("DELETE /api/delete HTTP/1.1", body=b"{}"), {403}, False),
    ("blocked create", req("POST /api/create HTTP/1.1", body=b"{}"), {403}, False),
    ("blocked push", req("POST /api/push HTTP/1.1", body=b"{}"), {403}, False),
    ("blocked copy", req("POST /api/copy HTTP/1.1", body=b"{}"), {403}, False),
    ("blocked root", req("GET / HTTP/1.1"), {403}, False),
    ("pct letter", req("POST /api/%70ull HTTP/1.1", body=b"{}"), {403}, False),
    ("pct letter in allowed", req("POST /v1/%63hat/completions HTTP/1.1", body=JSON), {403}, False),
    ("pct slash", req("GET /v1/models/..%2f..%2fapi%2fpull HTTP/1.1"), {403}, False),
    ("pct dot", req("GET /v1/models/%2e%2e/%2e%2e/api/tags HTTP/1.1"), {403}, False),
    ("pct mixed case", req("GET /v1/models/%2E%2e%2F%2e%2E%2fapi%2Fpull HTTP/1.1"), {403}, False),
    ("pct whole", req("GET /%76%31/%6d%6f%64%65%6c%73 HTTP/1.1"), {403}, False),
    ("double pct", req("GET /v1/models/%252e%252e/api HTTP/1.1"), {403}, False),
    ("dot segments", req("GET /v1/models/../../api/pull HTTP/1.1"), {403}, False),
    ("dot segments after allowed", req("POST /v1/chat/completions/../../api/pull HTTP/1.1", body=b"{}"), {403}, False),
    ("single dot", req("GET /v1/./models HTTP/1.1"), {403}, False),
    ("model dot dot", req("GET /v1/models/.. HTTP/1.1"), {403}, False),
    ("double slash", req("POST //api/pull HTTP/1.1", body=b"{}"), {403}, False),
    ("double slash in allowed", req("POST /v1//chat/completions HTTP/1.1", body=JSON), {403}, False),
    ("trailing slash", req("POST /v1/chat/completions/ HTTP/1.1", body=JSON), {403}, False),
    ("backslashes", req("GET /v1\\models HTTP/1.1"), {400, 403}, False),
    ("backslash traversal", req("GET /v1/models/..\\..\\api\\pull HTTP/1.1"), {400, 403}, False),
    ("semicolon param", req("POST /v1/chat/completions;a=b HTTP/1.1", body=JSON), {403}, False),
    ("semicolon in model", req("GET /v1/models/x;/../../api/pull HTTP/1.1"), {403}, False),
    ("pct NUL", req("POST /v1/chat/completions%00 HTTP/1.1", body=JSON), {403}, False),
    ("raw NUL", req("POST /v1/chat/completions\x00/x HTTP/1.1", body=JSON), {400}, False),
    ("control byte", req("GET /v1/models\x01 HTTP/1.1"), {400}, False),
    ("tab in target", req("GET /v1/models\t/api/pull HTTP/1.1"), {400}, False),
    ("upper case path", req("POST /API/PULL HTTP/1.1", body=b"{}"), {403}, False),
    ("upper case allowed", req("POST /V1/CHAT/COMPLETIONS HTTP/1.1", body=JSON), {403}, False),
    ("lower case method", req("post /v1/chat/completions HTTP/1.1", body=JSON), {400, 405}, False),
    ("absolute form blocked", req("POST http://127.0.0.1/api/pull HTTP/1.1", body=b"{}"), {400}, False),
    ("absolute form allowed", req("POST http://x/v1/chat/completions HTTP/1.1", body=JSON), {400}, False),
    ("asterisk form", req("OPTIONS * HTTP/1.1"), {400}, False),
    ("connect", req("CONNECT 127.0.0.1:11434 HTTP/1.1"), {400, 405}, False),
    ("trace", req("TRACE /v1/models HTTP/1.1"), {405}, False),
    ("head not listed", req("HEAD /v1/models HTTP/1.1"), {405}, False),
    ("wrong method", req("DELETE /v1/models HTTP/1.1"), {405}, False),
    ("method override header", req("POST /v1/models HTTP/1.1", "X-HTTP-Method-Override: GET", body=b"{}"), {405}, False),
    ("fragment", req("GET /v1/models#/../../api/pull HTTP/1.1"), {400, 403}, False),
    ("utf-8 path", req("GET /v1/m\u00f6dels HTTP/1.1"), {400, 403}, False),
    ("CL + TE smuggling", req("POST /v1/chat/completions HTTP/1.1", "Content-Length: 4",
                              "Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED), {400, 411}, False),
    ("TE + CL smuggling", req("POST /v1/chat/completions HTTP/1.1", "Transfer-Encoding: chunked",
                              "Content-Length: 80", body=b"0\r\n\r\n" + SMUGGLED), {400, 411}, False),
    ("TE obfuscated", req("POST /v1/chat/completions HTTP/1.1", "Transfer-Encoding: xchunked",
                          "Content-Length: 5", body=b"0\r\n\r\n" + SMUGGLED), {400, 411, 501}, False),
    ("CL CL conflict", req("POST /v1/chat/completions HTTP/1.1", "Content-Length: 5",
                           "Content-Length: 70", body=JSON), {400}, False),
    ("duplicate host", req("GET /v1/models HTTP/1.1", "Host: evil.example"), {400}, False),
    # HAProxy unfolds obs-fold (RFC 9112 allows a proxy to); the request itself is allowed.
    ("folded header", req("GET /v1/models HTTP/1.1", "X-A: a", " folded: yes"), {200, 400}, None),
    ("space before colon", req("GET /v1/models HTTP/1.1", "Transfer-Encoding : chunked"), {400}, False),
    ("body too large", req("POST /v1/chat/completions HTTP/1.1", "Content-Length: 1048577"), {413}, False),
    ("body length past 32 bits", req("POST /v1/chat/completions HTTP/1.1", "Content-Length: 999999999999"), {413}, False),
    ("body length not a number", req("POST /v1/chat/completions HTTP/1.1", "Content-Length: +5", body=b"{}"), {400, 413}, False),
    ("overlong url", req("GET /v1/models/" + "a" * 20000 + " HTTP/1.1"), {400, 414}, False),
    ("overlong header", req("GET /v1/models HTTP/1.1", *[f"X-Long-{i}: " + "b" * 8000 for i in range(10)]), {400, 431}, False),
    ("too many headers", req("GET /v1/models HTTP/1.1", *[f"X-{i}: {i}" for i in range(150)]), {400}, False),
    # HTTP/1.1 only: the HTTP/2 preface is a bad request.
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {0, 400}, False),
    ("h2c upgrade", req("GET /v1/models HTTP/1.1", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"), {200}, True),
    # Host: only names of this server reach the engine (DNS rebinding).
    ("rebinding host", req("GET /api/tags HTTP/1.1", host="rebind.attacker.example"), {421}, False),
    ("rebinding host with port", req("GET /api/tags HTTP/1.1", host="rebind.attacker.example:11434"), {421}, False),
    ("our name as a suffix", req("GET /api/tags HTTP/1.1", host=f"{NAME}.attacker.example"), {421}, False),
    ("no host, HTTP/1.0", req("GET /api/tags HTTP/1.0", host=None), {421}, False),
    ("no host, HTTP/1.1", req("GET /api/tags HTTP/1.1", host=None), {400, 421}, False),
    ("empty host", req("GET /api/tags HTTP/1.1", host=""), {400, 421}, False),
    ("our name, upper case", req("GET /api/tags HTTP/1.1", host=NAME.upper()), {200}, True),
    ("our name, root dot", req("GET /api/tags HTTP/1.1", host=NAME + "."), {200}, True),
    # Control bytes in header values: HAProxy itself forwards NUL, ESC, DEL.
    ("NUL in a header", req("GET /api/tags HTTP/1.1", "X-A: a\x00b"), {400}, False),
    ("SOH in a header", req("GET /api/tags HTTP/1.1", "X-A: a\x01b"), {400}, False),
    ("ESC in a header", req("GET /api/tags HTTP/1.1", "X-A: a\x1b[2J"), {400}, False),
    ("DEL in a header", req("GET /api/tags HTTP/1.1", "X-A: a\x7fb"), {400}, False),
    ("NUL in the host", req("GET /api/tags HTTP/1.1", host=NAME + "\x00.evil"), {400}, False),
    ("tab in a header", req("GET /api/tags HTTP/1.1", "X-A: a\tb"), {200}, True),
    # Model management: refused whatever the rules (the rules cannot even name it).
    ("blob upload", req("POST /api/blobs/sha256:" + "0" * 64 + " HTTP/1.1", body=b"x"), {403}, False),
    ("blob probe", req("HEAD /api/blobs/sha256:" + "0" * 64 + " HTTP/1.1"), {403}, False),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", {400}, False),
    ("bad version", req("GET /v1/models HTTP/9.9"), {200, 400, 505}, None),
    # HTTP/0.9 style: HAProxy refuses it, or waits for the rest of a request that never comes.
    ("no version", b"GET /api/pull\r\n\r\n", {0, 400}, False),
]


@pytest.mark.parametrize("name, raw, expected, forwarded", BATTERY, ids=[b[0] for b in BATTERY])
def test_battery(proxy: Stack, name: str, raw: bytes, expected: set[int], forwarded: bool) -> None:
    before = len(proxy.engine_requests())
    answer = exchange(proxy, raw)
    got = statuses(answer) or [0]
    assert got[0] in expected, f"{name}: got {got[0]}, expected {expected}"
    if got[0] in (403, 405, 411, 413) and not raw.startswith(b"HEAD"):
        assert b'"error"' in answer  # a short JSON body saying so
    new = proxy.engine_requests()[before:]
    new = [r for r in new if r["target"] != "/"]
    if forwarded is not None:
        assert bool(new) == forwarded, f"{name}: engine saw {new}"
    assert_engine_saw_only_allowed(proxy)


def test_pipelined_requests_are_each_judged(proxy: Stack) -> None:
    before = len(proxy.engine_requests())
    raw = (req("GET /v1/models HTTP/1.1", close=False) + req("POST /api/pull HTTP/1.1", body=b"{}", close=False)
           + req("GET /api/version HTTP/1.1"))
    got = statuses(exchange(proxy, raw))
    assert got == [200, 403, 200]
    seen = [r["target"] for r in proxy.engine_requests()[before:] if r["target"] != "/"]
    assert "/api/pull" not in seen and seen[0] == "/v1/models"
    assert_engine_saw_only_allowed(proxy)


def test_http_1_0_and_headers_forwarded_cleanly(proxy: Stack) -> None:
    before = len(proxy.engine_requests())
    got = statuses(exchange(proxy, f"GET /api/tags HTTP/1.0\r\nHost: {NAME}\r\nX-HTTP-Method-Override: DELETE\r\n"
                                   "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
                                   "X-Forwarded-Host: evil\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".encode()))
    assert got == [200]
    record = [r for r in proxy.engine_requests()[before:] if r["target"] == "/api/tags"][-1]
    headers = {k.lower(): v for k, v in record["headers"]}
    for dropped in ("x-http-method-override", "forwarded", "x-real-ip", "x-forwarded-host", "upgrade"):
        assert dropped not in headers, dropped
    assert "upgrade" not in headers.get("connection", "").lower()
    assert headers["x-forwarded-for"] == "127.0.0.1"  # ours, not the client's
    assert headers["host"] == f"127.0.0.1:{proxy.engine_port}"


def test_http2_prior_knowledge_gets_nothing_through(proxy: Stack) -> None:
    """HTTP/2 requests carried no Content-Length past the 411/413 rules: a 5 MiB body reached
    the engine with max_body_mb = 1. The listener speaks HTTP/1.1 only now."""
    import httpx
    before = len(proxy.engine_requests())
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        for method, path, body in (("POST", "/v1/chat/completions", b"x" * (5 << 20)), ("GET", "/api/tags", None),
                                   ("POST", "/api/pull", b"{}")):
            with pytest.raises(httpx.HTTPError):
                client.request(method, proxy.url(path), content=body, headers={"Host": NAME})
    assert [r for r in proxy.engine_requests()[before:] if r["target"] != "/"] == []
    assert httpx.get(proxy.url("/api/tags"), timeout=5).status_code == 200  # HTTP/1.1 as ever


METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get", "Post", "FOO"])
PIECES = st.sampled_from(["v1", "api", "models", "chat", "completions", "messages", "responses", "pull", "tags",
                          "show", "version", "delete", "..", ".", "", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "%00",
                          "%70ull", ";x=1", "\\", "a:b", "qwen2.5-coder:32b", "hf.co", "V1", "API", "?q=1", "#f"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, pieces=st.lists(PIECES, min_size=1, max_size=6), lead=st.sampled_from(["/", "//", "", "http://h/"]))
def test_property_engine_only_sees_what_the_allowlist_permits(proxy: Stack, method: str, pieces: list[str], lead: str) -> None:
    target = lead + "/".join(pieces)
    body = b"{}" if method.upper() in ("POST", "PUT", "PATCH", "DELETE") else b""
    before = len(proxy.engine_requests())
    got = statuses(exchange(proxy, req(f"{method} {target} HTTP/1.1", body=body)))
    assert got
    new = [r for r in proxy.engine_requests()[before:] if r["target"] != "/"]
    verdict = allowlist.decide(ALLOW, method, target)
    if got[0] == 400:
        assert not new  # HAProxy refused to parse it: nothing forwarded
    elif verdict == 0:
        assert got[0] not in (403, 405) and len(new) == 1 and new[0]["target"] == target
    else:
        assert got[0] == verdict and not new  # HAProxy decided exactly what our model of it says
    assert_engine_saw_only_allowed(proxy)
