"""Metering with the Ollama stand-in: the ledger's sums are what the stand-in says it produced,
per client, for every API shape, through the real SDK clients; what the engine does not report
is estimated and marked; nothing a client sends changes its own count."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from ai_server.access import clients
from ai_server.haproxy import runtime
from ai_server.haproxy.metering import SPOOL
from harness import PROXY_HOST, Stack, wait_for

MODEL = "smollm2:135m"
GENERATION_RULES = "".join(f'\n[[allow]]\npath = "{p}"\nmethods = ["POST"]\n' for p in (
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/completions", "/v1/embeddings"))
TOKENS = {name: "ais_" + name[0] * 43 for name in ("laptop", "phone", "ci")}
CLIENTS = "".join(f'[[client]]\nname = "{n}"\ntoken_sha256 = "{clients.token_hash(t)}"\n' for n, t in TOKENS.items())


def metered_stack(make_stack: Any, extra_clients: str = "", **engine: str) -> Stack:
    stack = make_stack({"FAKE_OLLAMA_TOKENS": "7", **engine})
    from ai_server.base.tomlfile import default_text
    (stack.config_dir / "allowlist.toml").write_text(default_text("allowlist.toml") + GENERATION_RULES)
    (stack.config_dir / "clients.toml").write_text(CLIENTS + extra_clients)
    stack.start()
    return stack


def usage(stack: Stack, by: str = "client", since: str = "1d") -> dict[str, dict[str, Any]]:
    result = stack.cli("usage", "--json", "--by", by, "--since", since)
    assert result.returncode == 0, result.stderr
    return {row["key"]: row for row in json.loads(result.stdout)["rows"]}


def ledger_has(stack: Stack, requests: int) -> dict[str, dict[str, Any]]:
    return wait_for(lambda: (rows := usage(stack)) and sum(r["requests"] for r in rows.values()) >= requests and rows,
                    20, what=f"{requests} requests in the ledger")


def headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}", "X-Test-Client": name}


def every_shape(stack: Stack, name: str) -> int:
    """Each API shape once, as `name`, with the SDKs; the number of generations sent."""
    oa = openai.OpenAI(base_url=stack.url("/v1"), api_key=TOKENS[name], default_headers={"X-Test-Client": name})
    messages = [{"role": "user", "content": f"hello from {name}, say something"}]
    oa.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    list(oa.chat.completions.create(model=MODEL, messages=messages, stream=True,  # type: ignore[call-overload]
                                    stream_options={"include_usage": True}))
    oa.completions.create(model=MODEL, prompt="once upon a time")
    list(oa.completions.create(model=MODEL, prompt="once upon a time", stream=True, stream_options={"include_usage": True}))
    oa.embeddings.create(model=MODEL, input=["one two three", "four"])
    oa.responses.create(model=MODEL, input="write a haiku")
    list(oa.responses.create(model=MODEL, input="write a haiku", stream=True))
    an = anthropic.Anthropic(base_url=stack.url(""), api_key=TOKENS[name], default_headers={"X-Test-Client": name})
    an.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi there"}])
    with an.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi there you"}]) as stream:
        stream.until_done()
    ol = ollama.Client(host=stack.url(""), headers=headers(name), timeout=30)
    ol.chat(model=MODEL, messages=messages)
    list(ol.chat(model=MODEL, messages=messages, stream=True))
    ol.generate(model=MODEL, prompt="why is the sky blue")
    ol.embed(model=MODEL, input="embed me please")
    return 13


def produced_by(stack: Stack) -> dict[str, list[int]]:
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for item in stack.produced():
        entry = sums[item["client"]]
        entry[0] += item["input"]
        entry[1] += item["output"]
        entry[2] += 1
    return sums


def test_ledger_sums_equal_what_the_engine_produced_for_every_api_shape(make_stack: Any) -> None:
    stack = metered_stack(make_stack)
    sent = sum(every_shape(stack, name) for name in ("laptop", "phone"))
    rows = ledger_has(stack, sent)
    produced = produced_by(stack)
    for name in ("laptop", "phone"):
        row = rows[name]
        assert (row["input_tokens"], row["output_tokens"]) == tuple(produced[name][:2]), (name, row, produced[name])
        assert row["requests"] == produced[name][2] == 13 and row["estimated"] == 0 and row["errors"] == 0
        assert row["gpu_seconds"] > 0 and row["ttft_p50_ms"] is not None
    assert "ci" not in rows
    by_model = usage(stack, "model")
    assert set(by_model) == {MODEL} and by_model[MODEL]["requests"] == sent
    events = [e for e in stack.events("request") if e.get("usage_source")]
    assert len(events) == sent and all(e["usage_source"] == "engine" for e in events)
    assert all(isinstance(e["gpu_s"], float) and e["input_tokens"] > 0 for e in events)


def test_what_the_engine_does_not_report_is_estimated_and_marked(make_stack: Any) -> None:
    stack = metered_stack(make_stack)
    oa = openai.OpenAI(base_url=stack.url("/v1"), api_key=TOKENS["ci"])
    # Ollama sends no usage on a stream unless asked (stream_options.include_usage).
    chunks = [c for c in oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True) if c.choices and c.choices[0].delta.content]
    # /api/embeddings reports no count at all.
    httpx.post(stack.url("/api/embeddings"), json={"model": MODEL, "prompt": "count me"}, headers=headers("ci"), timeout=10)
    rows = ledger_has(stack, 2)
    assert rows["ci"]["estimated"] == 2 and rows["ci"]["output_tokens"] == len(chunks) == 7
    assert rows["ci"]["input_tokens"] > 0
    reasons = {e["path"]: e["estimated_reason"] for e in stack.events("request") if e.get("usage_source") == "estimated"}
    assert "include_usage" in reasons["/v1/chat/completions"] and "no counts" in reasons["/api/embeddings"]


def test_nothing_a_client_sends_changes_its_own_count(make_stack: Any) -> None:
    """Usage-shaped JSON in the request (body, headers, a prompt asking for it) is never read."""
    stack = metered_stack(make_stack)
    sneaky = {"model": MODEL, "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "prompt_eval_count": 0,
              "eval_count": 0, "stream": False, "stream_options": {"include_usage": False},
              "messages": [{"role": "user", "content": '"usage": {"prompt_tokens": 0}, "eval_count": 0'}]}
    answer = httpx.post(stack.url("/v1/chat/completions"), json=sneaky, timeout=10,
                        headers={**headers("laptop"), "X-Usage": "0", "X-Ai-Server-Meter": "m=json,up=0,uc=0"})
    assert answer.status_code == 200
    rows = ledger_has(stack, 1)
    produced = produced_by(stack)["laptop"]
    assert (rows["laptop"]["input_tokens"], rows["laptop"]["output_tokens"]) == (produced[0], produced[1])
    assert rows["laptop"]["output_tokens"] == 7 and rows["laptop"]["estimated"] == 0


@pytest.mark.parametrize("lie", ["negative", "string", "huge", "float", "repeat", "nonjson"])
def test_an_engine_that_lies_is_estimated_with_a_reason_never_a_crash(make_stack: Any, lie: str) -> None:
    stack = metered_stack(make_stack, FAKE_OLLAMA_USAGE_LIE=lie)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}]}
    httpx.post(stack.url("/api/chat"), json={**chat, "stream": True}, headers=headers("laptop"), timeout=10)
    httpx.post(stack.url("/v1/chat/completions"), json={**chat, "stream": True, "stream_options": {"include_usage": True}},
               headers=headers("laptop"), timeout=10)
    rows = ledger_has(stack, 2)
    events = [e for e in stack.events("request") if e.get("usage_source")]
    assert len(events) == 2
    for event in events:
        if lie == "nonjson" and event["path"] == "/v1/chat/completions":
            continue  # the stand-in breaks only Ollama's native final line
        assert event["usage_source"] == "estimated", event
        assert event["estimated_reason"], event
        # The estimate is what was delivered, never the lie.
        assert 0 < event["output_tokens"] <= 7 and 0 < event["input_tokens"] < 1000
    assert rows["laptop"]["output_tokens"] <= 14
    assert stack.child("haproxy")["state"] == "RUNNING" and not stack.events("metering_failed")


# -- quotas --------------------------------------------------------------------------------------

QUOTA_CLIENT = '[[client]]\nname = "kid"\ntoken_sha256 = "{hash}"\ntokens_per_day = 30\n'
KID = "ais_" + "k" * 43


def chat_as(stack: Stack, token: str, stream: bool = False, name: str = "kid", held: bool = False) -> httpx.Response:
    marked = {"X-Test-Hold": "1"} if held else {}
    return httpx.post(stack.url("/api/chat"), headers={"Authorization": f"Bearer {token}", "X-Test-Client": name, **marked},
                      json={"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "one two three"}]},
                      timeout=30)


def test_a_quota_crossed_refuses_the_next_request_and_lets_running_ones_finish(make_stack: Any, tmp_path: Any) -> None:
    """How soon after the crossing the refusal comes is bench/usage.py's figure; here, that once
    the supervisor says the client is refused (quota_exceeded is logged after the proxy's map
    has it), the proxy refuses it, and a stream running across the crossing finishes whole."""
    hold = tmp_path / "hold"
    stack = metered_stack(make_stack, QUOTA_CLIENT.format(hash=clients.token_hash(KID)), FAKE_OLLAMA_HOLD=str(hold),
                          FAKE_OLLAMA_HOLD_MARKED="1")
    hold.touch()
    held: dict[str, Any] = {}
    running = threading.Thread(target=lambda: held.update(answer=chat_as(stack, KID, stream=True, held=True)))
    running.start()
    wait_for(lambda: stack.engine_load()["held"] == 1, 10, what="the held stream running")
    # Not marked, so not held: these cross the quota while the stream is still running. The
    # counts come from each answer, not from the stand-in's record: that is written after the
    # answer, and on one core the proxy could refuse the next request before it was.
    used = 0
    while used < 30:
        answer = chat_as(stack, KID)
        assert answer.status_code == 200
        used += answer.json()["prompt_eval_count"] + answer.json()["eval_count"]
    wait_for(lambda: stack.events("quota_exceeded", client="kid"), 10, what="the supervisor refusing kid")
    refused = chat_as(stack, KID)
    assert refused.status_code == 429, refused.text
    hold.unlink()
    running.join(30)
    assert held["answer"].status_code == 200 and '"done":true' in held["answer"].text
    assert stack.events("quota_warning", client="kid")
    # Both crossings are alerts too (80% and 100%), firing until the window resets.
    for condition in ("quota_warning", "quota_exhausted"):
        wait_for(lambda c=condition: stack.events("alert", condition=c, state="firing"), 10, what=f"the {condition} alert")
    body = refused.json()
    assert body["client"] == "kid" and body["reason"] == body["quota"] == "tokens_per_day"
    assert body["used"] >= 30 and body["limit"] == 30 and body["resets_at"].endswith(("Z", ":00"))
    assert 0 < int(refused.headers["Retry-After"]) <= 86400 + 3600
    # Other clients are served; the refused request never reached the engine; the stream that
    # finished after the crossing counts too.
    assert httpx.post(stack.url("/api/chat"), headers=headers("laptop"), timeout=10,
                      json={"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    used = sum(p["input"] + p["output"] for p in stack.produced() if p["client"] == "kid")
    rows = wait_for(lambda: (r := usage(stack)) and r["kid"]["input_tokens"] + r["kid"]["output_tokens"] == used and r,
                    20, what="every kid token in the ledger")
    assert rows["kid"]["requests"] == len([p for p in stack.produced() if p["client"] == "kid"])
    kid = next(r for r in json.loads(stack.cli("clients", "--json").stdout) if r["name"] == "kid")
    assert kid["quotas"]["tokens_per_day"]["over"] and kid["quotas"]["tokens_per_day"]["used"] == used


def test_a_quota_resets_at_midnight_in_the_usage_timezone(make_stack: Any) -> None:
    """The supervisor's calendar starts 25 s before midnight (the CALENDAR_FROM test seam): the
    client refused before midnight is served once it passes, as Retry-After said."""
    import time
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Kolkata")  # +05:30: its midnight is not on a UTC hour
    midnight = (datetime.now(tz) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    stack = make_stack({"FAKE_OLLAMA_TOKENS": "7"})
    from ai_server.base.tomlfile import default_text
    (stack.config_dir / "allowlist.toml").write_text(default_text("allowlist.toml") + GENERATION_RULES)
    (stack.config_dir / "clients.toml").write_text(QUOTA_CLIENT.format(hash=clients.token_hash(KID)))
    stack.write_config(stack.default_config('[usage]\ntimezone = "Asia/Kolkata"\n'))
    stack.start(timers={"ai_server.observe.usage.metering.CALENDAR_FROM": midnight.timestamp() - 25})
    refused = None
    for _ in range(20):
        answer = chat_as(stack, KID)
        if answer.status_code == 429:
            refused = answer
            break
    assert refused is not None, "never refused"
    retry = int(refused.headers["Retry-After"])
    assert 0 < retry <= 25 and refused.json()["resets_at"] == midnight.isoformat()
    waited = time.monotonic()
    wait_for(lambda: chat_as(stack, KID).status_code == 200, retry + 10, interval=0.2, what="served after midnight")
    assert time.monotonic() - waited >= retry - 2
    wait_for(lambda: stack.events("quota_reset", client="kid"), 5, what="the supervisor's reset")


# -- lossless ----------------------------------------------------------------------------------


def test_a_burst_of_5000_requests_from_50_clients_is_recorded_whole(make_stack: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = [f"c{i:02d}" for i in range(50)]
    tokens = {n: "ais_" + n + "x" * 40 for n in names}
    listing = "".join(f'[[client]]\nname = "{n}"\ntoken_sha256 = "{clients.token_hash(t)}"\n' for n, t in tokens.items())
    stack = make_stack({"FAKE_OLLAMA_TOKENS": "2"})
    from ai_server.base.tomlfile import default_text
    (stack.config_dir / "allowlist.toml").write_text(default_text("allowlist.toml") + GENERATION_RULES)
    (stack.config_dir / "clients.toml").write_text(listing)
    stack.write_config(stack.default_config().replace("start_timeout = 20\n", "start_timeout = 20\nparallel = 8\n"))
    stack.start()
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]}

    def client(name: str) -> list[int]:
        with httpx.Client(headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=120) as http:
            return [http.post(stack.url("/api/chat"), json=body).status_code for _ in range(100)]

    with ThreadPoolExecutor(50) as pool:
        statuses = [s for batch in pool.map(client, names) for s in batch]
    assert len(statuses) == 5000 and statuses.count(200) == 5000
    seen: list[int] = []

    def whole() -> dict[str, dict[str, Any]] | None:
        rows = usage(stack)
        seen.append(sum(x["requests"] for x in rows.values()))
        return rows if seen[-1] == 5000 else None

    try:
        rows = wait_for(whole, 120, interval=0.5, what="5000 in the ledger")
    except AssertionError as err:
        raise AssertionError(f"{err}: the ledger said {sorted(set(seen))}, {len(stack.events('request', path='/api/chat'))} "
                             f"request events, {stack.events('log_dropped')} {stack.events('metering_failed')}") from None
    assert set(rows) == set(names) and all(r["requests"] == 100 for r in rows.values())
    logged = wait_for(lambda: len(stack.events("request", path="/api/chat")) == 5000 and True, 60, interval=0.5,
                      what="5000 request events")
    assert logged and not stack.events("log_dropped")


def _disk_pressure(folder: Path, stop: threading.Event) -> None:
    """Writes 8 MiB and syncs every file system, until told to stop (stress-ng's --hdd and
    --io): a write() to the same disk may then wait on it, as on a busy machine."""
    block = os.urandom(1 << 20)
    path = folder / f"pressure-{threading.get_ident()}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while not stop.is_set():
            os.lseek(fd, 0, os.SEEK_SET)
            for _ in range(8):
                os.write(fd, block)
            os.sync()
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _requests(host: str, port: int, count: int) -> int:
    """`count` requests on one keep-alive connection; the number answered."""
    answered = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for _ in range(count):
            sock.sendall(f"GET /api/pull HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            answered += 1
    return answered


def test_the_request_log_drops_no_line_while_the_disk_is_busy(make_stack: Any) -> None:
    """HAProxy gives up on a log line when two of its threads write the log descriptor at once
    and the writer waits on the disk (175 to 836 of these lost with two threads): the
    request log, the ledger's only source, is written by one thread. 20,000 refusals (each a
    line) from 20 connections while two writers keep the disk busy: not one line dropped."""
    from concurrent.futures import ThreadPoolExecutor

    stack = make_stack()
    stack.start()
    stop = threading.Event()
    pressure = [threading.Thread(target=_disk_pressure, args=(stack.state_dir, stop)) for _ in range(2)]
    for thread in pressure:
        thread.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            answered = sum(pool.map(lambda _: _requests(PROXY_HOST, stack.proxy_port, 1000), range(20)))
    finally:
        stop.set()
        for thread in pressure:
            thread.join()
    assert answered == 20_000
    info = runtime.command(stack.state_dir / "haproxy.sock", "show info")
    assert re.search(r"^DroppedLogs: 0$", info, re.M), [line for line in info.splitlines() if "Dropped" in line]
    lines = (stack.state_dir / SPOOL).read_bytes().count(b"GET /api/pull")
    assert lines == 20_000


def test_the_ledger_survives_kill_9_of_the_supervisor(make_stack: Any) -> None:
    """What HAProxy logged before and after the supervisor died is read by the next one: the
    ledger ends with every request exactly once."""
    import os
    import signal

    stack = metered_stack(make_stack)
    for _ in range(20):
        assert chat_as(stack, TOKENS["laptop"], name="laptop").status_code == 200
    ledger_has(stack, 20)
    assert stack.proc is not None
    os.kill(stack.proc.pid, signal.SIGKILL)
    stack.proc.wait(10)
    # HAProxy outlives its supervisor: what it serves now is in the request log only.
    for _ in range(10):
        assert chat_as(stack, TOKENS["laptop"], name="laptop").status_code == 200
    stack.start()
    rows = ledger_has(stack, 30)
    produced = produced_by(stack)["laptop"]
    assert rows["laptop"]["requests"] == 30
    assert rows["laptop"]["input_tokens"] + rows["laptop"]["output_tokens"] == produced[0] + produced[1]
    assert stack.events("leftovers_stopped")


# -- max_seconds -----------------------------------------------------------------------------------

SLOW_CLIENT = '[[client]]\nname = "slow"\ntoken_sha256 = "{hash}"\nmax_seconds = 1\n'
SLOW = "ais_" + "s" * 43


def stream_cut(stack: Stack, token: str) -> tuple[int, str]:
    """A native chat stream as `slow`: its status and what arrived before the proxy cut it."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go on"}]}
    got = ""
    with httpx.stream("POST", stack.url("/api/chat"), json=body, timeout=60,
                      headers={"Authorization": f"Bearer {token}", "X-Test-Client": "slow"}) as answer:
        try:
            for text in answer.iter_text():
                got += text
        except httpx.HTTPError:
            pass  # cut mid-stream: the chunked body never ends
        return answer.status_code, got


@pytest.mark.parametrize("engine", ["streaming", "silent"])
def test_a_generation_past_max_seconds_is_cut_and_logged_with_the_reason(make_stack: Any, tmp_path: Any, engine: str) -> None:
    """Streaming: 40 chunks 0.3 s apart, cut at the first chunk past 1 s by the metering filter.
    Silent: the engine stops after its first chunk (held), cut by the server timeout that stands
    in for max_seconds. Either way the client got part of it, and what it got is counted."""
    hold = tmp_path / "hold"
    knobs = {"FAKE_OLLAMA_TOKENS": "40", "FAKE_OLLAMA_TOKEN_DELAY": "0.3"} if engine == "streaming" else \
        {"FAKE_OLLAMA_HOLD": str(hold)}
    if engine == "silent":
        hold.touch()
    stack = metered_stack(make_stack, SLOW_CLIENT.format(hash=clients.token_hash(SLOW)), **knobs)
    status, got = stream_cut(stack, SLOW)
    hold.unlink(missing_ok=True)
    lines = [json.loads(line) for line in got.splitlines() if line.strip().startswith("{")]
    assert status == 200 and 1 <= len(lines) < 40 and not any(line.get("done") for line in lines)
    event = wait_for(lambda: stack.events("request", who="slow"), 10, what="the cut request logged")[0]
    assert event["cut"] == "max_seconds" and event["usage_source"] == "estimated", event
    assert "cut" in event["estimated_reason"] and 1 <= event["output_tokens"] <= len(lines) + 1
    assert event["gpu_s"] >= 1.0
    # Others are not cut: the same stream as laptop runs to its end.
    if engine == "streaming":
        whole = httpx.post(stack.url("/api/chat"), headers=headers("laptop"), timeout=60,
                           json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go on"}]})
        assert '"done":true' in whole.text


# -- a ledger in trouble -------------------------------------------------------------------------


def chats(stack: Stack, n: int) -> None:
    for _ in range(n):
        assert chat_as(stack, TOKENS["laptop"], name="laptop").status_code == 200


def test_an_unwritable_ledger_is_said_everywhere_and_caught_up_once_it_can_be_written(make_stack: Any) -> None:
    """The ledger's path cannot be opened (a directory stands there): requests are served and
    logged, status, /metrics and an alert say so, with a count of what is unrecorded; once the
    path is free the ledger is caught up from the request log and the count goes back to 0."""
    stack = make_stack({"FAKE_OLLAMA_TOKENS": "7"})
    from ai_server.base.tomlfile import default_text
    (stack.config_dir / "allowlist.toml").write_text(default_text("allowlist.toml") + GENERATION_RULES)
    (stack.config_dir / "clients.toml").write_text(CLIENTS)
    blocker = stack.state_dir / "usage.sqlite"
    blocker.mkdir(parents=True)
    stack.start(timers={"ai_server.observe.usage.reader.RETRY_S": 1.0})
    chats(stack, 5)
    usage_now = wait_for(lambda: (u := stack.status()["usage"]) and u["ledger"]["unrecorded"] == 5 and u, 20,
                         what="5 unrecorded")
    assert not usage_now["ledger"]["ok"] and "usage.sqlite" in stack.cli("status").stdout
    assert "LEDGER NOT WRITTEN" in stack.cli("status").stdout
    assert stack.events("ledger_failed")
    wait_for(lambda: stack.events("alert", condition="ledger", state="firing"), 10, what="the ledger alert")
    exposition = httpx.get(stack.metrics_url + "/metrics", timeout=5).text
    assert "ai_server_ledger_ok 0" in exposition and "ai_server_ledger_unrecorded_requests 5" in exposition
    assert len(stack.events("request", path="/api/chat")) == 5
    blocker.rmdir()
    wait_for(lambda: stack.status()["usage"]["ledger"]["unrecorded"] == 0, 20, what="the ledger caught up")
    chats(stack, 2)
    rows = ledger_has(stack, 7)
    assert rows["laptop"]["requests"] == 7
    wait_for(lambda: stack.events("alert", condition="ledger", state="resolved"), 10, what="the alert resolved")
    assert "LEDGER" not in stack.cli("status").stdout


def test_a_corrupt_ledger_is_moved_aside_and_a_new_one_begins(make_stack: Any) -> None:
    stack = metered_stack(make_stack)
    chats(stack, 3)
    ledger_has(stack, 3)
    stack.stop()
    ledger = stack.state_dir / "usage.sqlite"
    ledger.write_bytes(b"this is not a ledger " * 500)
    for suffix in ("-wal", "-shm"):
        (stack.state_dir / f"usage.sqlite{suffix}").unlink(missing_ok=True)
    stack.start()
    chats(stack, 2)
    rows = ledger_has(stack, 2)
    assert rows["laptop"]["requests"] == 2  # what the damaged file held stays in it, aside
    aside = list(stack.state_dir.glob("usage.sqlite.corrupt-*"))
    assert aside and aside[0].read_bytes().startswith(b"this is not a ledger")
    failed = stack.events("ledger_failed")
    assert failed and "moved aside" in failed[-1]["error"]


# -- time to first token -----------------------------------------------------------------------------


def first_chunk_then_hold(stack: Stack, hold: Path, path: str, body: dict[str, Any]) -> tuple[float, float]:
    """A stream whose engine stops after its first token until the hold is released: ms from
    sending to the first chunk as the client got it, and ms the engine was then held for."""
    hold.touch()
    with httpx.Client(timeout=30) as client:
        start = time.perf_counter()
        with client.stream("POST", stack.url(path), headers=headers("laptop"), json=body) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            assert next(chunks)
            first = (time.perf_counter() - start) * 1000
            # The gap to measure against, not a wait for an event: the engine is held on purpose.
            time.sleep(0.4)
            held = (time.perf_counter() - start) * 1000 - first
            hold.unlink()
            for _ in chunks:
                pass
    return first, held


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/generate", {"model": MODEL, "prompt": "hi"}),
], ids=["sse", "ndjson-chat", "ndjson-generate"])
def test_time_to_first_token_is_when_the_first_chunk_passed_though_the_meter_reads_it_later(
        make_stack: Any, tmp_path: Path, path: str, body: dict[str, Any]) -> None:
    """The filter keeps the first chunk and reads it with the second, so that no JSON is read
    before the first token goes on. Its time must still be the first chunk's: the proxy had
    it before the client did, and long before the engine's second one."""
    hold = tmp_path / "hold"
    stack = metered_stack(make_stack, FAKE_OLLAMA_HOLD=str(hold))
    first, held = first_chunk_then_hold(stack, hold, path, body)
    event = wait_for(lambda: next(iter(stack.events("request", who="laptop")), None), what="the request event")
    assert event["usage_source"] in ("engine", "estimated"), event   # metered (OpenAI streams: estimated)
    assert event["ttft_ms"] is not None and 0 <= event["ttft_ms"] <= first + 1, (event["ttft_ms"], first, held)
    assert held >= 400
