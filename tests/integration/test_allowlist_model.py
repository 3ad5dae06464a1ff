"""The proxy proven against its model on generated allowlists, not only the shipped one.

For each generated rule set (overlapping rules, {model} in every allowed position, hostile
strings as rule paths), the rules that validation accepts are compiled and swapped into a
running HAProxy exactly as the supervisor does it; then random requests go through. For every
one, HAProxy's verdict must equal allowlist.decide's, and the engine (which records what
reaches it) must see a request exactly when decide forwards it. Every hostile path must be
refused by validation, naming the rule, before anything is compiled.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_server.access import allowlist
from ai_server.access.allowlist import METHODS, Allowlist, check_rule_path
from ai_server.access.allowlist import parse as parse_allowlist
from ai_server.base.errors import ConfigError
from ai_server.haproxy import maps, runtime
from harness import PROXY_HOST, Stack, dispose, new_stack

SEGMENTS = ["v1", "api", "models", "chat", "completions", "tags", "show", "x", "a.b", "m:1", "~u", "-", "pull"]
HOSTILE = ["/api/tags\n", "/api/tags\r\n", "/v1/models ", " /v1/models", "/v1/mo dels", "/v1/%2e%2e", "/v1;x",
           "/v1\\models", "/{model}", "/api/{model}", "/api/blobs/{model}", "/v1/{model}{model}", "/v1/{model}x",
           "/v1/{modelx}", "/a/../b", "/a/./b", "//a", "/a\x00", "/a\u2028", "/a\u00e9", "/a#b", "/a?b", "v1/models",
           "/api/pull", "/api/delete", "/v1/(a|b)", "/v1/.*", "/v1/[a]", "/v1/a$", "/v1/^a", "/v1/a+b", "/a b/{model}"]
MODEL_NAMES = ["m", "qwen2.5-coder:32b", "hf.co/org/repo:Q4_K_M", "a/b/c/d", "a/b/c/d/e", ".hidden", "..", "_x",
               "x%2fy", "a:b/c"]

segment = st.sampled_from(SEGMENTS)
# {model} anywhere a whole segment may stand: first, middle, last, alone.
valid_path = st.lists(st.one_of(segment, st.just("{model}")), min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts)).filter(lambda p: p.count("{model}") <= 1)
hostile_path = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=12).map(lambda t: "/" + t))
rule = st.tuples(st.one_of(valid_path, valid_path, hostile_path),
                 st.lists(st.sampled_from(METHODS), min_size=1, max_size=3, unique=True))


ALLOWED = parse_allowlist('[[allow]]\npath = "/v1/chat/completions"\nmethods = ["POST"]\n')


@pytest.fixture(scope="module")
def proxy() -> Iterator[Stack]:
    stack = new_stack()
    stack.start()
    yield stack
    dispose(stack)


def toml_rules(rules: list[tuple[str, list[str]]]) -> str:
    document = tomlkit.document()
    table = tomlkit.aot()
    for path, methods in rules:
        entry = tomlkit.table()
        entry["path"] = path
        entry["methods"] = methods
        table.append(entry)
    document["allow"] = table
    return tomlkit.dumps(document)


def accepted(rules: list[tuple[str, list[str]]]) -> Allowlist:
    """Validation on each rule alone (hostile ones must be refused, naming allow[0].path), then
    the accepted ones together, as one file."""
    keep, seen = [], set()
    for path, methods in rules:
        problem = check_rule_path(path)
        if problem is not None:
            with pytest.raises(ConfigError) as refused:
                parse_allowlist(toml_rules([(path, methods)]))
            assert "allow[0].path" in str(refused.value), repr(path)
            continue
        if path not in seen:
            seen.add(path)
            keep.append((path, methods))
    return parse_allowlist(toml_rules(keep))


def instance(path: str, model: str) -> str:
    return path.replace("{model}", model)


def send(stack: Stack, method: str, target: str) -> int:
    body = b"{}" if method in ("POST", "PUT", "PATCH", "DELETE") else b""
    head = f"{method} {target} HTTP/1.1\r\nHost: {PROXY_HOST}:{stack.proxy_port}\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n" if body else ""
    with socket.create_connection((PROXY_HOST, stack.proxy_port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rules=st.lists(rule, max_size=6), data=st.data())
def test_haproxy_decides_what_the_model_decides(proxy: Stack, rules: list[tuple[str, list[str]]],
                                                 data: st.DataObject) -> None:
    allow = accepted(rules)
    runtime.swap(proxy.state_dir / "haproxy.sock", maps.allowlist_maps(allow))
    paths = [r.path for r in allow.rules] or ["/v1/models"]
    targets = data.draw(st.lists(st.one_of(
        st.builds(instance, st.sampled_from(paths), st.sampled_from(MODEL_NAMES)),
        valid_path.map(lambda p: instance(p, "m")),
        st.sampled_from(["/api/pull", "/api/blobs/sha256:" + "0" * 64, "/"])), min_size=1, max_size=6))
    for target in targets:
        method = data.draw(st.sampled_from([*METHODS, "TRACE", "get"]))
        before = len(proxy.engine_requests())
        status = send(proxy, method, target)
        verdict = allowlist.decide(allow, method, target)
        reached = [r for r in proxy.engine_requests()[before:] if r["target"] != "/"]
        rules_text = [(r.path, r.methods) for r in allow.rules]
        if verdict == 0:
            assert status not in (400, 403, 405, 421), (method, target, status, rules_text)
            assert [r["target"] for r in reached] == [target], (method, target, rules_text)
        else:
            assert status == verdict, (method, target, status, verdict, rules_text)
            assert reached == [], (method, target, rules_text)


def test_overlapping_rules_agree(proxy: Stack) -> None:
    """The model said 405 where HAProxy forwarded: /v1/models/{model} GET then /v1/models/special POST."""
    allow = accepted([("/v1/models/{model}", ["GET"]), ("/v1/models/special", ["POST"])])
    runtime.swap(proxy.state_dir / "haproxy.sock", maps.allowlist_maps(allow))
    for method, target, expected in (("POST", "/v1/models/special", 0), ("GET", "/v1/models/special", 0),
                                     ("DELETE", "/v1/models/special", 405), ("POST", "/v1/models/other", 405)):
        assert allowlist.decide(allow, method, target) == expected
        status = send(proxy, method, target)
        assert (status not in (403, 405)) if expected == 0 else status == expected, (method, target, status)
    assert allowlist.allowed_methods(allow, "/v1/models/special") == ["GET", "POST"]


def test_405_lists_every_method_any_matching_rule_allows(proxy: Stack) -> None:
    allow = accepted([("/v1/{model}", ["GET"]), ("/v1/models/{model}", ["POST", "DELETE"]), ("/v1/models/x", ["PUT"])])
    runtime.swap(proxy.state_dir / "haproxy.sock", maps.allowlist_maps(allow))
    with socket.create_connection((PROXY_HOST, proxy.proxy_port), timeout=5) as sock:
        sock.sendall(f"PATCH /v1/models/x HTTP/1.1\r\nHost: {PROXY_HOST}\r\n"
                     "Connection: close\r\nContent-Length: 0\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert " 405 " in head.splitlines()[0]
    assert "allow: get, post, put, delete" in head
    assert allowlist.allowed_methods(allow, "/v1/models/x") == ["GET", "POST", "PUT", "DELETE"]


GLOBS = ["*", "smollm2:*", "qwen2.5-coder:*", "llama3", "hf.co/*", "a?c:1", "Qwen*", "m"]
NAMES = ["smollm2:135m", "SmolLM2:135M", "qwen2.5-coder:32b", "llama3", "llama3:latest", "llama3:70b",
         "hf.co/org/repo:Q4", "abc:1", "a-c:1", "m", "m:latest", "qwen", "bad name", "x/../y"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(globs=st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3, unique=True), data=st.data())
def test_haproxy_judges_models_as_the_model_does(proxy: Stack, globs: list[str], data: st.DataObject) -> None:
    """The clients' model check against clients.model_allowed, for generated policies (the
    [defaults] of callers that are not tailnet peers, as these are)."""
    from ai_server.access import clients
    policy = clients.Policy(models=tuple(globs))
    swapped = clients.Clients(defaults=policy)
    runtime.swap(proxy.state_dir / "haproxy.sock", [*maps.allowlist_maps(ALLOWED),
                                                    *maps.client_maps(swapped, ALLOWED, (), ollama=True)])
    for name in data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4)):
        body = '{"messages":[],"model":' + __import__("json").dumps(name) + "}"
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {PROXY_HOST}:{proxy.proxy_port}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        with socket.create_connection((PROXY_HOST, proxy.proxy_port), timeout=5) as sock:
            sock.sendall(head.encode() + body.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        refused = status == 403 and b'"reason":"model"' in answer
        allowed = clients.model_allowed(policy, name, ollama=True)
        assert refused != allowed and status in (200, 403, 404), (globs, name, status, answer[-200:])
