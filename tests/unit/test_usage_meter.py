"""What a metered answer counts for (observe/usage/meter.py, pure): each API's counts, estimates
with their reasons, and an engine that lies."""

from __future__ import annotations

import pytest

from ai_server.observe.records import ENGINE, ESTIMATED
from ai_server.observe.usage import meter, parse

BASE = "q=400,b=900,ev=9,tx=7,t0=1000000,t2=3000000,t1=1500000"


def decide(path: str, text: str, status: int = 200, cut: bool = False) -> meter.Usage:
    return meter.decide(path, meter.read(text), status, 500, cut)


@pytest.mark.parametrize("path, counts, expected", [
    ("/api/chat", "m=nd,pe=12,ec=7,dn=T", (12, 7)),
    ("/api/generate", "m=json,pe=3,ec=9,dn=T", (3, 9)),
    ("/api/chat", "m=nd,ec=7,dn=T", (0, 7)),                 # prompt_eval_count omitted: all cached
    ("/api/chat", "m=nd,dn=T", (0, 0)),                      # a load request: done, nothing generated
    ("/api/embed", "m=json,pe=5", (5, 0)),
    ("/v1/chat/completions", "m=sse,up=31,uc=3", (31, 3)),
    ("/v1/chat/completions", "m=json,up=31,uc=5,tp=31,td=5,tc=0", (31, 5)),
    ("/v1/chat/completions", "m=sse,tp=1,td=3,tc=30", (31, 3)),   # llama-server without usage: timings
    ("/v1/completions", "m=sse,up=4*8+,uc=7*8+", (4, 7)),   # Ollama: zeros on every chunk, then the counts
    ("/v1/embeddings", "m=json,up=6", (6, 0)),
    ("/v1/messages", "m=json,ui=1,uo=3,ur=30", (31, 3)),     # llama-server: cache reads are input too
    ("/v1/messages", "m=sse,mi=9,mo=0,ui=5,uo=7", (5, 7)),   # Ollama: an estimate first, the count at the end
    ("/v1/messages", "m=sse,mi=1,mo=0,mr=30,uo=3", (31, 3)),  # llama-server: message_start, then output
    ("/v1/responses", "m=sse,ri=8,ro=7", (8, 7)),
    ("/v1/responses", "m=json,ui=8,uo=7", (8, 7)),
])
def test_the_engine_counts_by_api_shape(path: str, counts: str, expected: tuple[int, int]) -> None:
    usage = decide(path, f"{counts},{BASE}")
    assert (usage.input_tokens, usage.output_tokens, usage.source, usage.reason) == (*expected, ENGINE, None)


def test_a_stream_without_counts_is_estimated_from_what_it_carried() -> None:
    usage = decide("/v1/chat/completions", f"m=sse,{BASE}")
    assert (usage.input_tokens, usage.output_tokens, usage.source) == (100, 7, ESTIMATED)  # 400 bytes / 4; 7 events
    assert "include_usage" in (usage.reason or "")
    assert "no counts" in (decide("/api/embeddings", f"m=json,{BASE}").reason or "")
    assert decide("/api/embeddings", f"m=json,{BASE}").output_tokens == 0


def test_a_cut_stream_counts_what_was_delivered() -> None:
    usage = decide("/api/chat", f"m=nd,{BASE}", cut=True)
    assert (usage.output_tokens, usage.source) == (7, ESTIMATED) and "cut" in (usage.reason or "")
    # Anthropic's input count came first: it stands, the output is what was delivered.
    started = decide("/v1/messages", f"m=sse,mi=12,mo=0,{BASE}", cut=True)
    assert (started.input_tokens, started.output_tokens, started.source) == (12, 7, ESTIMATED)


@pytest.mark.parametrize("lie, why", [
    ("uc=-5", "negative"), ("uc=S", "a string"), ("uc=s", "an empty string"), ("uc=f", "not a whole number"),
    ("uc=n", "null"), ("uc=o", "an object"), ("uc=L", "too long"), ("uc=99999999999", "more than any one request"),
    ("uc=9*2!", "2 times with different values"),
])
def test_a_count_that_lies_is_estimated_with_the_reason(lie: str, why: str) -> None:
    usage = decide("/v1/chat/completions", f"m=sse,up=5,{lie},{BASE}")
    assert usage.source == ESTIMATED and why in (usage.reason or ""), usage
    assert usage.output_tokens == 7 and usage.input_tokens == 100


def test_errors_compressed_too_large_and_unreadable() -> None:
    assert decide("/api/chat", f"m=err,{BASE}", status=500) == meter.Usage(0, 0, ENGINE)
    assert decide("/api/chat", f"m=nd,pe=3,ec=4,dn=T,{BASE}", status=404) == meter.Usage(0, 0, ENGINE)
    assert "compressed" in (decide("/api/chat", f"m=enc,{BASE}").reason or "")
    assert "too large" in (decide("/api/chat", f"m=json,{BASE},x=big").reason or "")
    assert "not the JSON" in (decide("/api/chat", f"m=nd,{BASE},x=bad").reason or "")
    no_meter = meter.decide("/api/chat", None, 200, 400, False)
    assert no_meter.source == ESTIMATED and no_meter.input_tokens == 100 and "Lua" in (no_meter.reason or "")


@pytest.mark.parametrize("text", ["", "garbage", "m=sse,up=1 2", "m=sse,zz=4", "m=sse,q=abc", "up=3", "m=sse,up=3*x!"])
def test_a_meter_that_cannot_be_read_is_none(text: str) -> None:
    assert meter.read(text) is None


LINE = ("ai-server-request 1-2-3 1796284065000000 100.64.0.7 51234 {status} 1532 301 0 {queue} 1 15 2048 {term} "
        "generate gate laptop qwen:7b normal {meter} POST {path}")


def ended(meter_text: str, status: int = 200, term: str = "----", path: str = "/api/chat", queue: int = 3):
    line = LINE.format(status=status, term=term, meter=meter_text, path=path, queue=queue)
    record = parse.record(line, lambda p: p, now=1796284070.0)
    assert record is not None and not hasattr(record, "started_at")
    return record


def test_an_access_line_becomes_a_metered_record() -> None:
    record = ended(f"m=nd,pe=12,ec=7,dn=T,{BASE}")
    assert (record.client, record.model, record.route, record.status) == ("laptop", "qwen:7b", "/api/chat", 200)
    assert (record.input_tokens, record.output_tokens, record.usage_source) == (12, 7, ENGINE)
    assert record.gpu_s == 2.0 and record.received_at == 1796284065.0 and record.ended_at == 3.0
    assert record.ttft_ms is None  # t1 (1.5 s after the epoch) is before the request: nonsense, not negative
    assert record.cut is None and record.metered


def test_who_cut_a_stream() -> None:
    assert ended(f"m=nd,{BASE}", term="CD--").cut == "client"
    assert ended(f"m=nd,{BASE},x=cut", term="SD--").cut == "max_seconds"
    assert ended(f"m=nd,{BASE},mx=600000", term="sD--").cut == "max_seconds"
    assert ended(f"m=nd,{BASE}", term="sD--").cut == "engine"
    assert ended(f"m=nd,{BASE}", term="SD--").cut == "engine"


def test_what_is_not_a_generation_or_never_reached_an_engine_is_not_metered() -> None:
    assert not ended("-", path="/v1/models").metered
    line = LINE.format(status=503, term="sQ--", meter="-", path="/api/chat", queue=-1)
    line = line.replace("generate gate", "generate <NOSRV>")
    record = parse.record(line, lambda p: p, now=1.0)
    assert record is not None and not record.metered  # type: ignore[union-attr]
    # Reached the engine, but no filter read it (HAProxy without Lua): estimated from its timings.
    bare = ended("-")
    assert bare.metered and bare.usage_source == ESTIMATED and bare.gpu_s == 2.045  # 2048 ms - 0 (TR) - 3 (Tw)


def test_a_start_line_is_a_started_record() -> None:
    record = parse.record("ai-server-start 1-2-3 1796284065250000 m0 studio-2 laptop qwen:7b interactive /api/chat",
                          lambda p: "/api/chat", 0.0)
    assert record is not None and record.started_at == 1796284065.25  # type: ignore[union-attr]
    assert (record.client, record.node, record.priority) == ("laptop", "studio-2", "interactive")  # type: ignore[union-attr]
    assert parse.record("ai-server-start 1-2-3 notanumber m0 s laptop - - /x", lambda p: p, 0.0) is None
