"""The metering filter's Lua tables are the Python ones: a count the Lua reports under a code
the supervisor does not know (or the other way round) would be lost silently."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ai_server.haproxy import meter


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
