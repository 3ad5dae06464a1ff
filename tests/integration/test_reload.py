"""Hot reload: save a file and the running proxy enforces it, without dropping a request."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from ai_server.base import tomlfile
from harness import Stack, finish, wait_for

DEFAULT_ALLOW = tomlfile.default_text("allowlist.toml")
PS_RULE = '\n[[allow]]\npath = "/api/ps"\nmethods = ["GET"]\n'


def save_like_an_editor(path: Path, text: str) -> None:
    """Write a new file and rename it over the old one, as vim, VS Code and friends do."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text)
    os.replace(temporary, path)


def status_of(stack: Stack, path: str) -> int:
    return httpx.get(stack.url(path), timeout=30).status_code


def test_saved_allowlist_is_enforced(stack: Stack) -> None:
    allow_file = stack.config_dir / "allowlist.toml"
    haproxy_pid = stack.child("haproxy")["pid"]
    assert status_of(stack, "/api/ps") == 403
    save_like_an_editor(allow_file, DEFAULT_ALLOW + PS_RULE)
    wait_for(lambda: status_of(stack, "/api/ps") == 200, what="/api/ps allowed")
    assert stack.status()["proxy"]["rules"] == 9
    save_like_an_editor(allow_file, DEFAULT_ALLOW)
    wait_for(lambda: status_of(stack, "/api/ps") == 403, what="/api/ps refused again")
    reloads = stack.events("reloaded")
    assert reloads and reloads[-1]["changed"] == ["allowlist"] and "allowlist.toml" in reloads[-1]["trigger"]
    # Swapped into the running worker: no reload, the same HAProxy, no connection closed.
    assert len(stack.events("maps_swapped")) == 2 and not stack.events("proxy_reload")
    assert stack.child("haproxy")["pid"] == haproxy_pid


@pytest.mark.parametrize("broken, where, words", [
    ('[[allow]]\npath = "/v1/models"\nmethods = ["GET"\n', ":3:", "invalid TOML"),
    ('[[allow]]\npath = "/v1/models"\nmethods = ["GET"]\nverbs = ["POST"]\n', ":4: allow[0].verbs", "unknown key"),
    ('[[allow]]\npath = "/v1/models"\nmethods = ["YANK"]\n', ":3: allow[0].methods", "not a method"),
    ('[[allow]]\npath = "/v1/%2e%2e"\nmethods = ["GET"]\n', ":2: allow[0].path", "may hold only"),
])
def test_broken_file_keeps_the_last_good_config(stack: Stack, broken: str, where: str, words: str) -> None:
    allow_file = stack.config_dir / "allowlist.toml"
    haproxy_pid = stack.child("haproxy")["pid"]
    save_like_an_editor(allow_file, broken)
    error = wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error in status")
    assert f"allowlist.toml{where}" in error and words in error
    human = stack.cli("status")
    assert "config error:" in human.stdout and "last good config stays in force" in human.stdout
    assert human.returncode == 5  # running, on the last good config: a warning for monitoring scripts
    logged = stack.events("config_error")[-1]
    assert logged["level"] == "error" and logged["file"].endswith("allowlist.toml") and logged["line"] == int(where.split(":")[1])
    # The last good list still rules: allowed still allowed, blocked still blocked.
    assert status_of(stack, "/api/tags") == 200 and status_of(stack, "/api/pull") == 403
    assert stack.child("haproxy")["pid"] == haproxy_pid
    save_like_an_editor(allow_file, DEFAULT_ALLOW)
    wait_for(lambda: stack.status()["proxy"]["config_error"] is None, what="error cleared")
    assert stack.status()["exit"] == 0


def test_broken_server_config_names_its_key(stack: Stack) -> None:
    stack.write_config(stack.default_config() + "\n[log]\nmax_mb = -1\n")
    error = wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error")
    assert "ai-server.toml" in error and "log.max_mb" in error
    reload = stack.cli("reload")
    assert reload.returncode == 1 and "log.max_mb" in reload.stderr


def test_engine_change_restarts_only_the_engine(stack: Stack) -> None:
    before = {c["name"]: c["pid"] for c in stack.status()["children"]}
    stack.write_config(stack.default_config().replace("[engine]\n", '[engine]\nenv = { OLLAMA_KEEP_ALIVE = "1h" }\n'))
    wait_for(lambda: (c := stack.child("ollama"))["pid"] not in (None, before["ollama"]) and c["state"] == "RUNNING",
             what="engine restarted")
    assert stack.child("haproxy")["pid"] == before["haproxy"]
    engine_env = __import__("psutil").Process(stack.child("ollama")["pid"]).environ()
    assert engine_env["OLLAMA_KEEP_ALIVE"] == "1h"
    assert engine_env["OLLAMA_HOST"] == f"127.0.0.1:{stack.engine_port}"


@pytest.mark.parametrize("name", ["ai-server.toml", "clients.toml"])
def test_a_file_caught_half_saved_is_not_applied(stack: Stack, name: str) -> None:
    """An editor saving in place truncates, then writes. A reload between the two applied the
    empty file: an empty ai-server.toml is every default (listen on "tailscale": the proxy
    stopped, with the streams it served), an empty clients.toml no client policy at all. Seen
    once in a full run, when the writer was descheduled between the two."""
    path = stack.config_dir / name
    if name == "clients.toml":
        path.write_text('[[client]]\nname = "script"\ntoken_sha256 = "' + '0' * 64 + '"\n')
        wait_for(lambda: stack.events("reloaded", trigger="saved clients.toml"), what="clients.toml applied")
    text = path.read_text()
    before = {c["name"]: c["pid"] for c in stack.status()["children"]}
    reloads = len(stack.events("reloaded"))
    with path.open("w") as editor:  # truncated: the save has begun
        got = wait_for(lambda: stack.events("config_settling") or stack.events("reloaded")[reloads:],
                       what="the truncation seen")
        assert got[0]["event"] == "config_settling" and got[0]["files"] == [name], got
        editor.write(text)
    wait_for(lambda: stack.events("reloaded")[reloads:], what="the save applied")
    assert not stack.events("config_emptied")
    assert all(r["changed"] == [] for r in stack.events("reloaded")[reloads:])
    assert {c["name"]: c["pid"] for c in stack.status()["children"]} == before
    assert not [e for e in stack.events("state") if e["to"] in ("STOPPED", "STOPPING")]


def test_a_file_written_in_pieces_is_applied_whole(stack: Stack) -> None:
    """A save written in two pieces is valid TOML after the first: clients.toml cut after one
    client. A reload between the pieces applied that part alone (attacker's finding F3; the
    clients after the cut lost their entries for a moment). The first piece comes by rename,
    written "just now" as far as its time says, so the supervisor sees it whole and fresh
    whatever the scheduler does; the rest is appended once it says it waits."""
    path = stack.config_dir / "clients.toml"
    whole = "".join(f'[[client]]\nname = "c{i}"\ntoken_sha256 = "{i:064d}"\n\n' for i in range(3))
    save_like_an_editor(path, whole)
    wait_for(lambda: stack.events("reloaded", trigger="saved clients.toml"), what="clients.toml applied")
    reloads, settlings = len(stack.events("reloaded")), len(stack.events("config_settling"))
    cut = whole.index("[[client]]", 1)
    piece = path.with_name(".clients.toml.part")
    piece.write_text(whole[:cut])
    ahead = time.time() + 60
    os.utime(piece, (ahead, ahead))
    os.replace(piece, path)
    got = wait_for(lambda: stack.events("config_settling")[settlings:] or stack.events("reloaded")[reloads:],
                   what="the first piece seen")
    assert got[0]["event"] == "config_settling" and got[0]["files"] == ["clients.toml"], got
    assert "being written" in got[0]["reason"]
    with path.open("a") as editor:
        editor.write(whole[cut:])
    wait_for(lambda: stack.events("reloaded")[reloads:], what="the save applied")
    # The append may be a second save after the first is applied; neither changes anything.
    assert all(r["changed"] == [] for r in stack.events("reloaded")[reloads:])
    assert not stack.events("config_unsettled")


def test_a_file_left_empty_is_refused_until_it_says_what_it_means(stack: Stack) -> None:
    allow_file = stack.config_dir / "allowlist.toml"
    save_like_an_editor(allow_file, DEFAULT_ALLOW + PS_RULE)
    wait_for(lambda: status_of(stack, "/api/ps") == 200, what="rule in force")
    allow_file.write_text("")
    wait_for(lambda: stack.events("config_error", file="allowlist.toml"), what="the empty file refused")
    assert stack.events("config_emptied", files=["allowlist.toml"])
    assert status_of(stack, "/api/ps") == 200
    assert "allowlist.toml: empty or gone" in stack.status()["proxy"]["config_error"]
    assert stack.cli("reload").returncode != 0  # a reload refuses it too
    save_like_an_editor(allow_file, "# no rules: nothing is forwarded\n")
    wait_for(lambda: status_of(stack, "/api/ps") == 403, what="no rules")


@pytest.mark.parametrize("how", ["emptied", "deleted", "dangling symlink"])
def test_a_clients_toml_emptied_or_deleted_never_lifts_unknown_deny(stack: Stack, how: str) -> None:
    """An emptied, deleted or dangling clients.toml was applied as meant after 2 s: every
    default, and `[unknown] deny` gone, so a caller with no token was served (attacker's pass 8).
    Now it is refused like a broken file, and the deny stays."""
    path = stack.config_dir / "clients.toml"
    save_like_an_editor(path, '[unknown]\npolicy = "deny"\n')
    wait_for(lambda: status_of(stack, "/api/tags") == 403, what="deny in force")
    errors = len(stack.events("config_error"))
    if how == "emptied":
        path.write_text("")
    else:
        path.unlink()
        if how == "dangling symlink":
            path.symlink_to(stack.config_dir / "nowhere.toml")
    wait_for(lambda: stack.events("config_error")[errors:], what="the missing file refused")
    assert status_of(stack, "/api/tags") == 403
    assert stack.events("config_error")[-1]["file"] == "clients.toml"


def test_proxy_change_reloads_in_place(stack: Stack) -> None:
    before = {c["name"]: c["pid"] for c in stack.status()["children"]}
    stack.write_config(stack.default_config().replace("drain_timeout = 5", "drain_timeout = 5\nmax_body_mb = 1"))
    wait_for(lambda: httpx.post(stack.url("/v1/chat/completions"), content=b"x" * (2 << 20), timeout=30).status_code == 413,
             what="new body limit")
    assert {c["name"]: c["pid"] for c in stack.status()["children"]} == before


def test_allow_commands_edit_the_file_and_the_server_follows(stack: Stack) -> None:
    allow_file = stack.config_dir / "allowlist.toml"
    allow_file.write_text(DEFAULT_ALLOW)
    added = stack.cli("allow", "add", "/api/ps", "--method", "GET")
    assert added.returncode == 0 and added.stdout.strip() == "allowed GET /api/ps"
    wait_for(lambda: status_of(stack, "/api/ps") == 200, what="/api/ps allowed")
    listed = stack.cli("allow", "list").stdout
    assert "/api/ps" in listed and "/v1/chat/completions  POST" in listed
    assert stack.cli("allow", "remove", "/api/ps").returncode == 0
    wait_for(lambda: status_of(stack, "/api/ps") == 403, what="/api/ps refused")
    assert allow_file.read_text() == DEFAULT_ALLOW  # comments and layout as they were
    bad = stack.cli("allow", "add", "/api/ps", "--method", "YANK")
    assert bad.returncode == 1 and "not a method" in bad.stderr and "Traceback" not in bad.stderr


def test_reload_under_load_drops_nothing(make_stack) -> None:
    """Concurrent clients, long streams among them, while the allowlist is rewritten many times."""
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKEN_DELAY": "0.05", "FAKE_OLLAMA_TOKENS": "40"})
    stack.start()
    allow_file = stack.config_dir / "allowlist.toml"
    allow_file.write_text(DEFAULT_ALLOW)
    stop = threading.Event()
    failures: list[str] = []
    counts = {"requests": 0, "streams": 0}

    def short_requests() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.get(stack.url("/api/tags"))
                    if response.status_code != 200:
                        failures.append(f"GET /api/tags -> {response.status_code}")
                    counts["requests"] += 1
                except httpx.HTTPError as err:
                    failures.append(f"GET /api/tags: {err!r}")

    def streams() -> None:
        body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    with client.stream("POST", stack.url("/v1/chat/completions"), json=body) as response:
                        events = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
                    chunks = [json.loads(e[6:]) for e in events if e != "data: [DONE]"]
                    if events[-1:] != ["data: [DONE]"] or len(chunks) != 41:
                        failures.append(f"cut stream: {len(chunks)} chunks, last {events[-1:]}")
                    counts["streams"] += 1
                except httpx.HTTPError as err:
                    failures.append(f"stream: {err!r}")

    workers = [threading.Thread(target=short_requests) for _ in range(3)] + [threading.Thread(target=streams) for _ in range(3)]
    for worker in workers:
        worker.start()
    enforced_after: list[float] = []
    try:
        # At least 12 rewrites, and on until the clients have done enough to prove something.
        i = 0
        while i < 12 or counts["streams"] < 6 or counts["requests"] < 50:
            assert i < 500, f"12 rewrites and then {i - 12} more, and still only {counts}"
            wanted = 200 if i % 2 == 0 else 403
            save_like_an_editor(allow_file, DEFAULT_ALLOW + (PS_RULE if wanted == 200 else ""))
            saved = time.monotonic()
            wait_for(lambda wanted=wanted: status_of(stack, "/api/ps") == wanted, interval=0.02, what=f"rewrite {i} enforced")
            enforced_after.append(time.monotonic() - saved)
            i += 1
    finally:
        stop.set()
        finish(*workers)
    assert failures == []
    print(f"\n{len(enforced_after)} rewrites, {counts['requests']} requests and {counts['streams']} streams, 0 failures; "
          f"enforced after max {max(enforced_after):.2f}s, median {statistics.median(enforced_after):.2f}s")


def test_proxy_reload_finishes_streams_in_flight(make_stack) -> None:
    """A change to [proxy] re-executes HAProxy (SIGUSR2); streams on the old worker run to the end."""
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKENS": "60"})
    stack.start()
    stack.hold()  # the four streams stay on the old workers through all three reloads
    body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    results: list[str] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=30) as response:
                lines = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
            results.append("ok" if lines[-1] == "data: [DONE]" and len(lines) == 62 else f"cut after {len(lines)}")
        except httpx.HTTPError as err:
            results.append(repr(err))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    stack.wait_held(4)
    for size in (10, 20, 30):
        stack.write_config(stack.default_config().replace("drain_timeout = 5", f"drain_timeout = 5\nmax_body_mb = {size}"))
        wait_for(lambda size=size: len(stack.events("proxy_reload")) >= size // 10, what="proxy reloaded")
        assert status_of(stack, "/api/tags") == 200
    assert stack.engine_load()["held"] == 4
    stack.release()
    finish(*threads)
    assert results == ["ok"] * 4


def test_allowlist_applies_at_once_while_the_engine_drains(make_stack) -> None:
    """The reload lock was held through an engine drain: a save waited behind a stream."""
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKENS": "100"})
    stack.write_config(stack.default_config().replace("start_timeout = 20", "start_timeout = 20\ndrain_timeout = 30"))
    stack.start()
    allow_file = stack.config_dir / "allowlist.toml"
    allow_file.write_text(DEFAULT_ALLOW)
    body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    streamed: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=60) as response:
            streamed.extend(ln for ln in response.iter_lines() if ln.startswith("data: "))

    stack.hold()  # the stream holds the drain until the test is done with it
    streamer = threading.Thread(target=stream)
    streamer.start()
    stack.wait_held(1)
    # An engine change: the engine must drain (the held stream) before it restarts.
    stack.write_config(stack.default_config().replace("start_timeout = 20", "start_timeout = 20\ndrain_timeout = 30")
                       .replace("[engine]\n", '[engine]\nenv = { OLLAMA_KEEP_ALIVE = "1h" }\n'))
    wait_for(lambda: stack.events("hold"), what="engine draining")
    saved = time.monotonic()
    # Nothing reaches the engine while it drains, so a request held by the drain would wait:
    # the proxy's own verdict on a refused path tells when the new list is in force.
    save_like_an_editor(allow_file, DEFAULT_ALLOW + PS_RULE)
    wait_for(lambda: any(e["rules"] == 9 for e in stack.events("maps_swapped")), interval=0.02,
             what="new allowlist in force")
    enforced = time.monotonic() - saved
    assert httpx.post(stack.url("/api/pull"), json={}, timeout=30).status_code == 403
    assert stack.cli("reload").returncode == 0
    # Enforced, and a reload answered, while the drain still waits for the held stream: behind
    # the drain they would have come only once it ended (drained, or drain_timeout at 30 s).
    assert not stack.events("drained") and not stack.events("drain_timeout"), "the drain should still be going on"
    stack.release()
    finish(streamer)
    assert streamed[-1] == "data: [DONE]" and len(streamed) == 102  # the drain protected it
    wait_for(lambda: stack.events("drained") and stack.child("ollama")["state"] == "RUNNING", what="restarted")
    assert status_of(stack, "/api/ps") == 200
    print(f"\nallowlist enforced {enforced:.3f}s after the save, while the engine drained")
