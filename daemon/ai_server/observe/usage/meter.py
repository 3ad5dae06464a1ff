"""What a metered request cost, from what HAProxy's metering filter read in the engine's answer
(haproxy/meter.py writes it into the access-log line as txn.meter). Pure.

Only the engine's answer counts: its own token counts where it gave them, in the shape of the
API it answered (Ollama's prompt_eval_count/eval_count; OpenAI's usage, or llama-server's
timings; Anthropic's message_start and message_delta; the Responses API's response.usage;
embeddings' usage or prompt_eval_count). Where it gave none, or gave nonsense (not a number,
negative, absurdly large, repeated with different values), the request is `estimated`, with the
reason: output from the events that carried text (streams; about one token each) or the
answer's size, input from the request's size (about 4 bytes a token, as Ollama itself estimates
Anthropic input). A stream cut before the engine's final count counts what was delivered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ai_server.observe.records import ENGINE, ESTIMATED

# No one request holds ten million tokens; a count above it is the engine's nonsense.
LIMIT = 10_000_000
BYTES_PER_TOKEN = 4

NAMES = {
    "pe": "prompt_eval_count", "ec": "eval_count", "dn": "done", "up": "usage.prompt_tokens",
    "uc": "usage.completion_tokens", "ui": "usage.input_tokens", "uo": "usage.output_tokens",
    "ur": "usage.cache_read_input_tokens", "uw": "usage.cache_creation_input_tokens", "tp": "timings.prompt_n",
    "td": "timings.predicted_n", "tc": "timings.cache_n", "mi": "message.usage.input_tokens",
    "mo": "message.usage.output_tokens", "mr": "message.usage.cache_read_input_tokens",
    "mw": "message.usage.cache_creation_input_tokens", "ri": "response.usage.input_tokens",
    "ro": "response.usage.output_tokens",
}
KINDS = {"s": "an empty string", "S": "a string", "f": "not a whole number", "n": "null", "b": "false", "T": "true",
         "o": "an object or array", "L": "too long a number"}
_ITEM = re.compile(r"([a-z][a-z0-9]?)=(-?[0-9]{1,15}|[sSfnbToL])(?:\*([0-9]{1,9})([=+!]))?")
_NUMBERS = ("q", "b", "ev", "tx", "t0", "t1", "t2", "mx")


@dataclass(frozen=True)
class Count:
    value: int | None      # the number, when it was one
    kind: str              # "int", or a KINDS letter
    times: int = 1
    agree: str = "="       # "=" all alike, "+" never decreasing, "!" otherwise


@dataclass(frozen=True)
class Reading:
    """What the filter saw: how the answer came (sse, nd, json, raw, err, enc, none), its size,
    its events and those that carried text, the times (epoch µs: slot taken, first text, end),
    the counts by code, and flags (bad: an event that was not JSON; big: too large to read;
    cut: max_seconds)."""
    mode: str
    request_bytes: int
    bytes: int
    events: int
    texts: int
    t0: int | None
    t1: int | None
    t2: int | None
    max_ms: int
    counts: dict[str, Count]
    flags: frozenset[str]

    @property
    def stream(self) -> bool:
        return self.mode in ("sse", "nd")


def read(text: str | None) -> Reading | None:
    """txn.meter as the filter wrote it, or None when there is none or it cannot be read."""
    if not text:
        return None
    numbers: dict[str, int] = {}
    counts: dict[str, Count] = {}
    mode, flags = "", frozenset[str]()
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key == "m":
            mode = value
        elif key == "x":
            flags = frozenset(value.split("."))
        elif key in _NUMBERS:
            if not value.isdigit():
                return None
            numbers[key] = int(value)
        else:
            found = _ITEM.fullmatch(item)
            if found is None or key not in NAMES:
                return None
            raw, times, agree = found.group(2), found.group(3), found.group(4)
            number = int(raw) if raw[-1].isdigit() else None
            counts[key] = Count(number, "int" if number is not None else raw, int(times or 1), agree or "=")
    if not mode:
        return None
    return Reading(mode, numbers.get("q", 0), numbers.get("b", 0), numbers.get("ev", 0), numbers.get("tx", 0),
                   numbers.get("t0"), numbers.get("t1"), numbers.get("t2"), numbers.get("mx", 0), counts, flags)


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    source: str                    # engine | estimated
    reason: str | None = None      # why estimated


class _Nonsense(Exception):
    """A count the engine gave that cannot be used."""


def api(path: str) -> str:
    """Which answer shape a generation path has."""
    if path in ("/api/chat", "/api/generate"):
        return "ollama"
    if path == "/api/embed":
        return "ollama-embed"
    if path == "/api/embeddings":
        return "ollama-embeddings"
    if path == "/v1/embeddings":
        return "openai-embed"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path == "/v1/responses":
        return "responses"
    return "openai"


def _count(reading: Reading, code: str) -> int | None:
    found = reading.counts.get(code)
    if found is None:
        return None
    name = NAMES[code]
    if found.kind != "int" or found.value is None:
        raise _Nonsense(f"{name} was {KINDS.get(found.kind, 'unreadable')}")
    if found.value < 0:
        raise _Nonsense(f"{name} was negative ({found.value})")
    if found.value > LIMIT:
        raise _Nonsense(f"{name} was {found.value}, more than any one request holds")
    if found.times > 1 and found.agree == "!":
        raise _Nonsense(f"{name} came {found.times} times with different values")
    return found.value


def _sum(*values: int | None) -> int:
    return sum(v for v in values if v is not None)


def _engine_counts(shape: str, r: Reading) -> tuple[int | None, int | None, bool]:
    """(input, output, final): the engine's counts for this shape, and whether its final count
    came. _Nonsense for a count that cannot be used."""
    def c(code: str) -> int | None:
        return _count(r, code)

    if shape == "ollama":
        done = r.counts.get("dn")
        final = (done is not None and done.kind == "T") or "ec" in r.counts
        return (c("pe") or 0, c("ec") or 0, True) if final else (None, None, False)
    if shape == "ollama-embed":
        value = c("pe")
        return (value, 0, True) if value is not None else (None, None, False)
    if shape == "ollama-embeddings":
        return None, None, False
    if shape == "openai-embed":
        value = c("up")
        return (value, 0, True) if value is not None else (None, None, False)
    if shape == "anthropic":
        if c("ui") is not None:
            given = _sum(c("ui"), c("ur"), c("uw"))
        elif c("mi") is not None:
            given = _sum(c("mi"), c("mr"), c("mw"))
        else:
            given = None
        output = c("uo")
        return given, output if output is not None else None, output is not None
    if shape == "responses":
        given, output = (c("ri"), c("ro")) if r.stream else (c("ui"), c("uo"))
        return given, output, output is not None
    # OpenAI chat and completions: usage, else llama-server's timings (prompt_n leaves out the
    # cached part of the prompt, cache_n is that part).
    if c("uc") is not None or c("up") is not None:
        return c("up") or 0, c("uc") or 0, True
    if c("td") is not None:
        return _sum(c("tp"), c("tc")), c("td"), True
    return None, None, False


def _estimate(value: int) -> int:
    return -(-value // BYTES_PER_TOKEN)


def decide(path: str, reading: Reading | None, status: int | None, request_bytes: int, cut: bool) -> Usage:
    """The tokens a metered request counts for. `request_bytes` is used only to estimate."""
    if status is None or not 200 <= status <= 299:
        return Usage(0, 0, ENGINE)   # the engine (or the proxy) refused: nothing was generated
    shape = api(path)
    if reading is None:
        return Usage(_estimate(request_bytes), 0, ESTIMATED, "no metering filter read this answer (HAProxy without Lua?)")
    size = reading.request_bytes or request_bytes
    embedding = shape.endswith(("-embed", "-embeddings"))
    delivered = reading.texts if reading.stream else 0 if embedding else _estimate(reading.bytes)
    if reading.mode == "enc":
        return Usage(_estimate(size), delivered, ESTIMATED, "the answer was compressed")
    if "big" in reading.flags:
        return Usage(_estimate(size), delivered, ESTIMATED, "the answer was too large to read")
    try:
        given, output, final = _engine_counts(shape, reading)
    except _Nonsense as err:
        return Usage(_estimate(size), delivered, ESTIMATED, f"the engine's count is unusable: {err}")
    if final and given is not None and output is not None:
        return Usage(given, output, ENGINE)
    if cut:
        reason = "cut before the engine's final count"
    elif final:
        reason = "the engine reported no input count"
    elif shape == "ollama-embeddings":
        reason = "this endpoint reports no counts"
    elif shape == "openai" and reading.stream:
        reason = "the engine sent no usage (the client did not ask for stream_options.include_usage)"
    elif "bad" in reading.flags:
        reason = "the answer was not the JSON its API sends"
    else:
        reason = "the engine reported no counts"
    return Usage(given if given is not None else _estimate(size), output if output is not None else delivered,
                 ESTIMATED, reason)
