"""The metering filter HAProxy loads: ai_server_meter.lua, a file of this package copied as it
is into the state dir (nothing in it is generated; what it is told comes as the filter's
arguments in haproxy.cfg, filter_line()).

It reads the engine's answer to a generation or an embedding as it passes and changes none of
it: every byte is forwarded as it came, when it came. What it finds goes into txn.meter, which
the access-log line carries at the stream's end (logfmt.py); the supervisor turns that into
tokens (observe/usage/meter.py). It also writes a `start` line (to starts.spool, appended with
O_APPEND, one write() a line) when the request takes an engine slot: the dashboard's "who is
calling now".

What it looks for, by JSON path (objects by key, arrays as `[]`), and nothing else: the counts
each API puts in its answer (Ollama's prompt_eval_count/eval_count, OpenAI's usage, llama-server's
timings, Anthropic's message_start/message_delta usage, the Responses API's response.usage), and
on streams whether an event carries generated text (for the estimate when no count comes, and
for the time to first token). Everything else is skipped without being read: a model's output
is inside JSON strings (or, for tool calls, objects under other keys), so nothing a client makes
a model say can stand in for a count. A count is reported as the engine wrote it (digits), or
as the kind of thing it was instead (s string, f fraction, n null, b boolean, o object, L too
long), with how often it came and whether its values agreed.

Streams (text/event-stream, application/x-ndjson) are read event by event; a whole JSON answer
is kept (up to MAX_JSON) and read once it has all passed. The first chunk of either is only kept,
with when it came, and read with the second (or at the end): HAProxy forwards a chunk once the
filter returns, and the first one is the time to first token. What the answer is (status,
content type and coding) the backend's http-response rule puts in HEAD_VAR, so there is no Lua
http_headers callback (one more call on each side of every metered request). max_seconds: a stream whose engine
slot has been held longer than the client's limit (txn.max_ms) is cut at its next chunk (an
engine that goes silent instead meets the same limit as its server timeout).
"""

from __future__ import annotations

from importlib import resources

METER_LUA = "ai_server_meter.lua"
# Where the backend puts the answer's status, content type and content coding for the filter.
HEAD_VAR = "txn.meter_head"
FILTER = "ai_server_meter"
# A non-streamed answer larger than this is not read (counted as estimated, "too large").
MAX_JSON = 16 * 1024 * 1024

# JSON path -> the short code the meter reports it under (observe/usage/meter.py reads them).
# The Lua holds the same table (tests/unit/test_meter_lua.py holds the two to each other).
COUNTERS = {
    "prompt_eval_count": "pe", "eval_count": "ec", "done": "dn",
    "usage.prompt_tokens": "up", "usage.completion_tokens": "uc",
    "usage.input_tokens": "ui", "usage.output_tokens": "uo",
    "usage.cache_read_input_tokens": "ur", "usage.cache_creation_input_tokens": "uw",
    "timings.prompt_n": "tp", "timings.predicted_n": "td", "timings.cache_n": "tc",
    "message.usage.input_tokens": "mi", "message.usage.output_tokens": "mo",
    "message.usage.cache_read_input_tokens": "mr", "message.usage.cache_creation_input_tokens": "mw",
    "response.usage.input_tokens": "ri", "response.usage.output_tokens": "ro",
}
# Strings that, non-empty, mean a stream event carries generated text.
TEXT_PATHS = (
    "response", "thinking", "message.content", "message.thinking", "message.tool_calls[].function.name",
    "choices[].text", "choices[].delta.content", "choices[].delta.reasoning_content", "choices[].delta.reasoning",
    "choices[].delta.tool_calls[].function.name", "choices[].delta.tool_calls[].function.arguments",
    "delta", "delta.text", "delta.thinking", "delta.partial_json",
)


def source() -> str:
    return resources.files("ai_server.haproxy").joinpath(METER_LUA).read_text(encoding="utf-8")


def filter_line(starts: str) -> str:
    """The backend line that meters what passes: the largest non-streamed answer it reads, and
    the file (in the state dir) its start lines go to, a plain name of ours."""
    if not all(c.isalnum() or c in "._-" for c in starts):
        raise ValueError(f"not a plain file name: {starts!r}")
    return f"    filter lua.{FILTER} {MAX_JSON} {starts}"
