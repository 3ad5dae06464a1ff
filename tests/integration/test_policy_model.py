"""The running proxy against its model: for 500 generated cases, HAProxy's answer to every
request equals policy.decide's, and the engine sees a request exactly when decide forwards it.

A case is a clients.toml (names with every character a name may hold, identities that overlap:
device, node ID, user, tag and token for the same peers, model globs), a tailnet (peers whose
HostNames are other peers' MagicDNS names, a node shared in from another tailnet, a CLI that
failed before any map was read), and requests (from peers, strangers, a front and loopback;
tokens good, unknown and malformed; a front's word; bodies near the buffer size, two models,
large headers). Each case's maps are compiled exactly as the supervisor compiles them and
swapped into one running HAProxy; the client table is cleared between cases.

The callers' addresses live on this machine's loopback interface (root; holds the netns lock,
the 100.x addresses being shared by every test process)."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_server.access import allowlist, clients, policy, tailscale
from ai_server.access.policy import Counts, Limits, Request
from ai_server.access.tailnet import Detection
from ai_server.base import tomlfile
from ai_server.haproxy import maps, runtime
from harness import Stack, dispose, netns_lock, new_stack, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")

LISTEN, LOOPBACK = "100.100.79.1", "127.0.0.2"
PEER_ADDRESSES = [f"100.100.79.{i}" for i in range(2, 8)]
STRANGER, FRONT = "100.100.79.8", "100.100.79.9"
SOURCES = [*PEER_ADDRESSES, STRANGER, FRONT]
SUFFIX = "tail1234.ts.net"
MAX_BODY = 1024 * 1024
ALLOW = allowlist.parse(tomlfile.default_text("allowlist.toml") + '[[allow]]\npath = "/api/chat"\nmethods = ["POST"]\n')
TOKENS = ["ais_" + c * 43 for c in "ABCD"]          # A-C may be clients' tokens; D never is
LABELS = ["laptop", "ci-box", "phone", "bobs-pc", "studio", "x1"]
USERS = {"1": "alice@example.com", "2": "bob@example.com", "3": "carol@example.com"}
TAGS = ["tag:ci", "tag:dev"]
MODELS = ["smollm2:135m", "SmolLM2:135M", "qwen2.5-coder:32b", "llama3", "hf.co/org/repo:Q4", "a-b_c.d:1", "x",
          "smollm2:11434/library/llama3:8b"]
GLOBS = ["*", "smollm2:*", "qwen2.5-coder:*", "llama3", "hf.co/*", "hf.co/**", "?-b_c.d:1", "X", "a-b_c.d:*"]
NAME_CHARS = "aAzZ09-_"


@dataclass
class Case:
    clients_text: str
    status_json: dict[str, Any]
    known: bool


@pytest.fixture(scope="module")
def proxy() -> Iterator[Stack]:
    with netns_lock():
        for address in (LISTEN, *SOURCES):  # on loopback: every one of them this machine's own
            sh("ip", "addr", "del", f"{address}/32", "dev", "lo", check=False)
            sh("ip", "addr", "add", f"{address}/32", "dev", "lo")
        stack = new_stack()
        stack.write_config(stack.default_config().replace(
            'listen = ["127.0.0.2"]', f'listen = ["{LISTEN}", "{LOOPBACK}"]').replace(
            "[proxy]\n", f'[proxy]\nmax_body_mb = 1\nfronts = ["{FRONT}"]\nrequest_timeout = 5\n'))
        try:
            stack.start()
            yield stack
        finally:
            dispose(stack)
            for address in (LISTEN, *SOURCES):
                sh("ip", "addr", "del", f"{address}/32", "dev", "lo", check=False)


# -- generated cases ---------------------------------------------------------------------------

names = st.text(NAME_CHARS, min_size=1, max_size=6).map(lambda t: "c" + t)  # plain names, every allowed punctuation


@st.composite
def tailnets(draw: Any) -> dict[str, Any]:
    peers = {}
    for i, address in enumerate(draw(st.lists(st.sampled_from(PEER_ADDRESSES), min_size=1, max_size=6, unique=True))):
        label = draw(st.sampled_from(LABELS))
        # A HostName is whatever the device says: often another device's MagicDNS name.
        host = draw(st.sampled_from([*LABELS, "My Laptop", label]))
        domain = draw(st.sampled_from([SUFFIX, SUFFIX, SUFFIX, "tail9999.ts.net"]))  # shared in from elsewhere
        entry = {"ID": f"n{i}{draw(st.sampled_from('ab'))}CNTRL", "HostName": host, "DNSName": f"{label}.{domain}.",
                 "UserID": int(draw(st.sampled_from(list(USERS)))), "TailscaleIPs": [address]}
        if draw(st.booleans()):
            entry["Tags"] = draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))
        peers[f"nodekey:{i}"] = entry
    return {"BackendState": "Running", "TailscaleIPs": [LISTEN], "MagicDNSSuffix": SUFFIX,
            "Self": {"DNSName": f"mymac.{SUFFIX}.", "TailscaleIPs": [LISTEN]}, "Peer": peers,
            "User": {k: {"ID": int(k), "LoginName": v} for k, v in USERS.items()}}


@st.composite
def policies(draw: Any, with_paths: bool) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append(f"models = {json.dumps(draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3, unique=True)))}")
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"rpm = {draw(st.integers(1, 3))}")
    if draw(st.booleans()):
        lines.append(f"priority = {json.dumps(draw(st.sampled_from(clients.PRIORITIES)))}")
    if with_paths and draw(st.integers(0, 2)) == 0:
        paths = draw(st.lists(st.sampled_from([r.path for r in ALLOW.rules]), min_size=1, max_size=4, unique=True))
        lines.append(f"paths = {json.dumps(paths)}")
    return "".join(line + "\n" for line in lines)


@st.composite
def identities(draw: Any, status: dict[str, Any]) -> str:
    peers = list(status["Peer"].values())
    kind = draw(st.sampled_from(["device", "device", "node_id", "user", "tag", "token_sha256"]))
    if kind == "device":
        some = draw(st.sampled_from(peers))
        value = draw(st.sampled_from([some["DNSName"].split(".")[0], some["DNSName"].rstrip("."), some["HostName"].lower()
                                      .replace(" ", "-")]))
    elif kind == "node_id":
        value = draw(st.sampled_from([p["ID"] for p in peers] + ["nZZCNTRL"]))
    elif kind == "user":
        value = draw(st.sampled_from(list(USERS.values())))
    elif kind == "tag":
        value = draw(st.sampled_from(TAGS))
    else:
        value = clients.token_hash(draw(st.sampled_from(TOKENS[:3])))
    return f"{kind} = {json.dumps(value)}\n"


@st.composite
def cases(draw: Any) -> Case:
    status = draw(tailnets())
    text = ""
    if draw(st.integers(0, 3)) > 0:
        text += "[defaults]\n" + draw(policies(False))
    text += f'[unknown]\npolicy = "{draw(st.sampled_from(["allow", "allow", "deny"]))}"\n'
    taken: set[str] = set()
    tokens_used: set[str] = set()
    for _ in range(draw(st.integers(0, 5))):
        name = draw(names.filter(lambda n: n not in taken))
        identity = draw(identities(status))
        if identity.startswith("token_sha256"):
            if identity in tokens_used:
                continue
            tokens_used.add(identity)
        taken.add(name)
        text += f'[[client]]\nname = "{name}"\n{identity}{draw(policies(True))}'
    return Case(text, status, known=draw(st.integers(0, 4)) > 0)


@st.composite
def requests(draw: Any, port: int) -> Request:
    rule = draw(st.sampled_from([*ALLOW.rules, None, None]))
    if rule is None:
        method, target = draw(st.sampled_from([("GET", "/nowhere"), ("POST", "/v1/nowhere"), ("POST", "/api/pull"),
                                               ("DELETE", "/v1/models"), ("GET", "/api/blobs/sha256:00")]))
    else:
        method = draw(st.sampled_from([*rule.methods, *rule.methods, *rule.methods, "PUT"]))
        target = rule.path.replace("{model}", draw(st.sampled_from(MODELS)))
    source = draw(st.sampled_from([*SOURCES, "127.0.0.1"]))
    listener = LOOPBACK if source == "127.0.0.1" else LISTEN
    host = draw(st.sampled_from([f"{listener}:{port}"] * 10 + ["mymac.tail1234.ts.net", "evil.example", "localhost"]))
    headers: list[tuple[str, str]] = [("Host", host)]
    # Mostly no token and a right Host, so that most requests get past who is calling to the
    # allowlist, the client's policy and the body.
    auth = draw(st.sampled_from([None] * 16 + [*TOKENS, "ais_short", "sk-dummy"]))
    if auth is not None:
        headers.append(draw(st.sampled_from([("Authorization", f"Bearer {auth}"), ("x-api-key", auth)])))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("X-Ai-Server-Client", draw(st.sampled_from(["unknown", "front", "ghost", "cA", "c-", "a.b"]))))
    if draw(st.integers(0, 6)) == 0:
        headers += [(f"X-Pad-{i}", "p" * 1000) for i in range(draw(st.integers(1, 62)))]  # up to the 64 KiB limit
    body = b""
    if method in ("POST", "PUT"):
        body = draw(bodies())
    if body or method in ("POST", "PUT"):
        headers.append(("Content-Length", str(len(body))))
    headers.append(("Connection", "close"))
    return Request(method, target, tuple(headers), body, source, listener)


@st.composite
def bodies(draw: Any) -> bytes:
    first, second = draw(st.sampled_from(MODELS)), draw(st.sampled_from([*MODELS, None, None]))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b""
    if kind == 1:
        return b"not json"
    text = '{"model":' + json.dumps(first) + ',"messages":[{"role":"user","content":"hi"}]'
    if kind == 2:  # near the buffer's size, the second name last
        text += ',"pad":"' + "x" * (MAX_BODY - len(text) - 100) + '"'
    if second is not None:
        text += ',"' + draw(st.sampled_from(["model", "MODEL", "mod\\u0065l", "name"])) + '":' + json.dumps(second)
    return (text + "}").encode()


# -- running a case ----------------------------------------------------------------------------

def exchange(stack: Stack, request: Request) -> tuple[int, dict[str, Any] | None]:
    lines = [f"{request.method} {request.target} HTTP/1.1", *(f"{k}: {v}" for k, v in request.headers)]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + request.body
    with socket.create_connection((request.listener, stack.proxy_port), timeout=10,
                                  source_address=(request.source, 0)) as sock:
        data = _send_reading(sock, raw)
        while chunk := _recv(sock):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1])
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return status, answer if isinstance(answer, dict) else None


def _send_reading(sock: socket.socket, raw: bytes) -> bytes:
    """Send `raw`, but stop once the proxy answers: it refuses on the headers alone (413, 403...)
    and closes, and a client still writing would meet a reset that can eat the answer."""
    data, sent = b"", 0
    while sent < len(raw):
        readable, writable, _ = select.select([sock], [sock], [], 10)
        if readable:
            return _recv(sock)
        if writable:
            try:
                sent += sock.send(raw[sent:sent + 65536])
            except (BrokenPipeError, ConnectionResetError):
                return _recv(sock)
    return data


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def swap_case(stack: Stack, case: Case) -> tuple[clients.Clients, Detection]:
    known = clients.parse(case.clients_text)
    status = tailscale.parse(json.dumps(case.status_json))
    tailnet = Detection((LISTEN,), status.names, peers=status.peers if case.known else (), peers_known=case.known)
    files = maps.every_map(ALLOW, (LISTEN, LOOPBACK), stack.proxy_port, status.names, known, tailnet.peers, True,
                           (FRONT,), peers_known=case.known)
    sock = stack.state_dir / "haproxy.sock"
    runtime.swap(sock, files)
    runtime.command(sock, "clear table clients")
    return known, tailnet


def judge(proxy: Stack, case: Case, batch: list[Request], limits: Limits, seen: set[tuple[int, str]]) -> None:
    """Send `batch` as one caller's run under `case`; HAProxy must answer what policy.evaluate says."""
    known, tailnet = swap_case(proxy, case)
    counted: dict[str, int] = {}
    for request in batch:
        expected = policy.evaluate(request, tailnet, known, ALLOW, limits, Counts(last_minute=dict(counted)))
        before = len(proxy.engine_requests())
        status, answer = exchange(proxy, request)
        reached = [r for r in proxy.engine_requests()[before:] if r["target"] != "/"]
        where = (case.clients_text, request.method, request.target, request.source, request.headers[:4],
                 request.body[:80], expected, status, answer)
        if expected.status == 0:
            assert [r["target"] for r in reached] == [request.target], where
            assert not (answer and "reason" in answer and answer.get("status") == status), where
        else:
            assert (status, (answer or {}).get("reason")) == (expected.status, expected.reason), where
            assert reached == [], where
        if expected.track:
            counted[expected.track] = counted.get(expected.track, 0) + 1
        seen.add((expected.status, expected.reason))


def directed(port: int) -> list[tuple[Case, list[Request]]]:
    """One run that reaches each answer the proxy can give here, so that every run of the test
    holds HAProxy to the model on all of them: which answers the generated cases reach depends
    on the draw (the rarest, an rpm refusal, needs a limited client's burst)."""
    peer = PEER_ADDRESSES[0]
    status = {"BackendState": "Running", "TailscaleIPs": [LISTEN], "MagicDNSSuffix": SUFFIX,
              "Self": {"DNSName": f"mymac.{SUFFIX}.", "TailscaleIPs": [LISTEN]},
              "Peer": {"nodekey:0": {"ID": "n0aCNTRL", "HostName": "laptop", "DNSName": f"laptop.{SUFFIX}.",
                                     "UserID": 1, "TailscaleIPs": [peer]}},
              "User": {k: {"ID": int(k), "LoginName": v} for k, v in USERS.items()}}
    text = ('[unknown]\npolicy = "deny"\n[[client]]\nname = "claptop"\ndevice = "laptop"\nrpm = 1\n'
            'models = ["smollm2:*"]\npaths = ["/v1/models", "/v1/chat/completions"]\n')

    def ask(method: str, target: str, *, source: str = peer, host: str = f"{LISTEN}:{port}",
            extra: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> Request:
        headers = (("Host", host), *extra)
        if method in ("POST", "PUT"):
            headers += (("Content-Length", str(len(body))),)
        return Request(method, target, (*headers, ("Connection", "close")), body, source, LISTEN)

    chat = '{"model":"%s","messages":[{"role":"user","content":"hi"}]%s}'
    # Refusals first: they do not count toward the rpm, the one admitted request does.
    run = [ask("GET", "/v1/models", host="evil.example"),                                   # 421 host
           ask("GET", "/v1/models", extra=(("X-Ai-Server-Client", "claptop"),)),           # 403 front
           ask("GET", "/v1/models", extra=(("Authorization", "Bearer ais_short"),)),       # 401 token
           ask("GET", "/v1/models", source=STRANGER),                                      # 403 unknown
           ask("POST", "/api/pull", body=b'{"model":"x"}'),                                # 403 management
           ask("GET", "/nowhere"),                                                         # 403 allowlist
           ask("PUT", "/v1/models"),                                                       # 405 method
           ask("GET", "/api/tags"),                                                        # 403 path
           ask("POST", "/v1/chat/completions", body=(chat % ("qwen2.5-coder:32b", "")).encode()),  # 403 model
           ask("POST", "/v1/chat/completions",
               body=(chat % ("smollm2:135m", ',"model":"llama3"')).encode()),              # 400 model
           ask("GET", "/v1/models"),                                                       # served
           ask("GET", "/v1/models")]                                                       # 429 rpm
    return [(Case(text, status, known=True), run),
            (Case(text, status, known=False), [ask("GET", "/v1/models")])]              # 503 identity


def test_haproxy_decides_what_policy_decide_decides(proxy: Stack) -> None:
    limits = Limits(max_body=MAX_BODY, body_memory=64 * MAX_BODY, ollama=True, fronts=frozenset({FRONT}),
                    hosts=frozenset(maps.host_forms((LISTEN, LOOPBACK), proxy.proxy_port, ("mymac.tail1234.ts.net", "mymac"))))
    ran: list[int] = []
    generated: set[tuple[int, str]] = set()

    @settings(max_examples=500, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=cases(), data=st.data())
    def check(case: Case, data: st.DataObject) -> None:
        # A few requests of all kinds, or one caller's burst (a client's rate).
        batch = st.one_of(st.lists(requests(proxy.proxy_port), min_size=1, max_size=6),
                          requests(proxy.proxy_port).map(lambda r: [r] * 4), requests(proxy.proxy_port).map(lambda r: [r] * 4))
        judge(proxy, case, data.draw(batch), limits, generated)
        ran.append(1)

    check()
    assert len(ran) >= 500
    seen = set(generated)
    for case, run in directed(proxy.proxy_port):
        judge(proxy, case, run, limits, seen)
    # Every answer the proxy can give here was held to the model.
    wanted = {(0, ""), (421, "host"), (403, "front"), (401, "token"), (403, "unknown"), (503, "identity"),
              (403, "management"), (403, "allowlist"), (405, "method"), (403, "path"), (429, "rpm"), (400, "model"),
              (403, "model")}
    assert wanted <= seen, wanted - seen
    print(f"\n{len(ran)} generated cases against the running HAProxy; answers they reached: {sorted(generated)}; "
          f"the directed run added {sorted(seen - generated)}")
