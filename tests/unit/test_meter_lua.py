"""The metering filter's Lua tables are the Python ones: a count the Lua reports under a code
the supervisor does not know (or the other way round) would be lost silently."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ai_server.haproxy import meter, metering


def lua_table(name: str) -> dict[str, str]:
    source = meter.source()
    body = re.search(rf"^local {name} = \{{\n(.*?)^\}}", source, re.M | re.S)
    assert body is not None, name
    return dict(re.findall(r'^\s*\["([^"]+)"\] = "([a-z]+)",$', body.group(1), re.M))


def test_the_lua_counts_what_meter_py_names_under_the_same_codes() -> None:
    assert lua_table("COUNTERS") == meter.COUNTERS


def test_the_lua_looks_for_text_where_meter_py_says() -> None:
    assert lua_table("TEXT") == {path: "t" for path in meter.TEXT_PATHS}


LUA = shutil.which("lua5.3")
WIDEST_FIND = Path(__file__).resolve().parents[1] / "fixtures" / "widest_find.lua"


@pytest.mark.skipif(LUA is None, reason="needs Debian's lua5.3 (.ci/dev test installs it)")
def test_skipping_what_holds_no_count_searches_no_long_stretch_with_a_pattern() -> None:
    """Attacker's pass 9: the filter reads a whole non-streamed answer (up to MAX_JSON) on
    the proxy's one thread, and skipped what holds no count with class searches ("[{%[]")
    that try the class at every byte: a 16 MiB answer of embeddings held the thread 0.4 s.
    Structural characters are found by plain (memchr) searches now. Run under lua5.3 with
    string.find wrapped: what the walk finds, and the most bytes one pattern search stepped
    over (the old walk's: a whole vector)."""
    vector = ",".join(f"{(i * 7919 % 2000 - 1000) / 1000:.6f}" for i in range(768))
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":[{vector}]}}' for i in range(200))
    answer = f'{{"object":"list","data":[{data}],"model":"m","usage":{{"prompt_tokens":7,"total_tokens":7}}}}'
    source = meter.source()
    walk = source[:source.index("-- The filter ---")] + "\nreturn members\n"
    script = (f"local widest = dofile('{WIDEST_FIND}'); "
              "local members = load(io.open(os.getenv('METER_WALK')):read('a'))(); local body = io.read('a'); local found = {}; "
              "local pos = members(body, 1, '', function(path, code, raw) found[#found + 1] = path .. '=' .. raw end); "
              "io.write(tostring(pos == #body + 1), ' ', widest(), ' ', table.concat(found, ' '))")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(walk)
        f.flush()
        out = subprocess.run([LUA, "-e", script], input=answer.encode(), capture_output=True, check=True,
                             timeout=60, env={**os.environ, "METER_WALK": f.name}).stdout.decode().split()
    assert out[0] == "true" and out[2:] == ["usage.prompt_tokens=7"], out
    assert int(out[1]) <= 64, out[1]


HEAD_CASES = {
    "200|text/event-stream; charset=utf-8|": "sse",
    "200|application/x-ndjson|": "nd",
    "200|Application/JSON|identity": "json",
    "200|application/json|gzip": "enc",
    "404|application/json|": "err",
    "503||": "err",
    "200|text/plain|": "raw",
    "|a|b|c": "err",          # a status that is no number: nothing was generated
}


@pytest.mark.skipif(LUA is None, reason="needs Debian's lua5.3 (.ci/dev test installs it)")
@pytest.mark.parametrize(("head", "mode"), HEAD_CASES.items())
def test_what_the_answer_is_comes_from_the_head_the_backend_rule_puts_in_a_variable(head: str, mode: str) -> None:
    """The filter has no http_headers callback (a Lua call on each side of every metered
    request): metering.py's http-response rule writes the status and headers to txn.meter_head,
    and Meter:kind reads them on the first chunk."""
    rule = next(line for line in metering.meter_backend(SimpleNamespace(lua=True)) if "http-response" in line)  # type: ignore[arg-type]
    assert f"set-var-fmt({meter.HEAD_VAR})" in rule and f'get_var("{meter.HEAD_VAR}")' in meter.source()
    script = ("core = {register_filter = function(name, class) Meter = class end}; filter = {}; "
              "dofile(os.getenv('METER_LUA')); "
              "local txn = {get_var = function(_, name) return name == 'txn.meter_head' and os.getenv('HEAD') or nil end}; "
              "local m = setmetatable({}, Meter); io.write(tostring(m:kind(txn)))")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(meter.source())
        f.flush()
        out = subprocess.run([LUA, "-e", script], capture_output=True, check=True, timeout=30,
                             env={**os.environ, "METER_LUA": f.name, "HEAD": head}).stdout.decode()
    assert out == mode
