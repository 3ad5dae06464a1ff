"""The model check (haproxy/ai_server.lua) under Debian's lua5.3, without HAProxy: its verdicts
on the cases that matter, its Python twin (access/modelscan.py, the policy model's) held to the
same verdicts, and both held to Go's encoding/json reading the body as Ollama's handlers do
(tests/gojson: gin's ShouldBindJSON, one Decode into the request struct), over thousands of
generated bodies. The property that matters: whenever the check lets a body through as naming
model M (or none), Go reads M (or none) too."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_server.access import modelscan

ROOT = Path(__file__).resolve().parents[2]
LUA_FILE = ROOT / "daemon" / "ai_server" / "haproxy" / "ai_server.lua"
DRIVER = ROOT / "tests" / "fixtures" / "lua_judge.lua"
WIDEST_FIND = ROOT / "tests" / "fixtures" / "widest_find.lua"
LUA = shutil.which("lua5.3")
GO = shutil.which("go")
needs_lua = pytest.mark.skipif(LUA is None, reason="needs Debian's lua5.3 (.ci/dev test installs it)")
CHAT = "/v1/chat/completions"


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def lua_judge(cases: list[tuple[str, bytes]], rules: str = "-", ollama: bool = True, late: bool = False) -> list[tuple[str, str]]:
    data = b"".join(frame(p.encode()) + frame(b) + (b"\1" if ollama else b"\0") for p, b in cases)
    args = [str(LUA), str(DRIVER), str(LUA_FILE), rules] + (["late"] if late else [])
    out = subprocess.run(args, input=data, capture_output=True, check=True, timeout=120).stdout.decode("utf-8", "replace")
    lines = out.split("\n")[:-1]
    assert len(lines) == len(cases), out[-500:]
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


@needs_lua
@pytest.mark.parametrize("body, verdict, model", [
    (b'{"model":"Qwen2.5-Coder:32B","messages":[]}', "ok", "qwen2.5-coder:32b"),
    (b'{"messages":[],"model":"llama3"}', "ok", "llama3:latest"),
    # Go keeps the last of two keys and matches them without case: two different names refused.
    (b'{"model":"a","MODEL":"b"}', "two", ""),
    (b'{"model":"a","Model":"A:latest"}', "ok", "a:latest"),  # the same name twice
    (b'{"messages":[],"mod\\u0065l":"qwen:7b"}', "ok", "qwen:7b"),  # an escaped key is the key
    (b'{"m\\u006Fdel":"x","model":"y"}', "two", ""),
    (b'{"name":"llama3"}', "ok", "llama3:latest"),  # /api/show's name
    (b'{"model":"x","name":"y"}', "two", ""),
    (b'{"a":{"model":"z"},"b":[{"model":"w"}],"model":"y"}', "ok", "y:latest"),  # nested keys are no model
    (b'{"a":"{\\"model\\":\\"z\\"}","model":"y"}', "ok", "y:latest"),  # nor is one inside a string
    (b'{"a":"\\\\","model":"y"}', "ok", "y:latest"),  # an escaped backslash ends no string early
    (b'{"model":null}', "ok", ""),
    (b'{"model":1}', "bad", "the model must be a string"),
    (b'{"model":["x"]}', "bad", "the model must be a string"),
    (b'{"model":"a b"}', "bad", "not a model name (letters, digits, . _ : / -)"),
    (b'{"model":"\\x"}', "bad", "the model name has a malformed escape"),
    (b'{"model":"unterminated', "bad", "the request body is not valid JSON"),
    (b'{"model":"ok"} {"model":"other"}', "two", ""),  # what Go never reads is judged anyway
    (b'[{"model":"x"}]', "ok", ""),  # not an object: names nothing (Go refuses it)
    (b' \n\t{ "model" : "x" }', "ok", "x:latest"),
])
def test_the_lua_reads_the_model_as_go_would(body: bytes, verdict: str, model: str) -> None:
    assert lua_judge([(CHAT, body)]) == [(verdict, model)]
    expected = modelscan.judge(CHAT, body, [], True)
    assert (expected[0], expected[1] or "") == (verdict, model)  # the Python twin agrees


@needs_lua
def test_models_in_the_path_count_with_those_in_the_body() -> None:
    rules = "/v1/models/|,/api/x/|/y"
    cases = [("/v1/models/hf.co/org/repo:Q4", b""), ("/v1/models/a/b/c/d/e", b""), ("/api/x/m1/y", b'{"model":"m2"}'),
             ("/api/x/m1/y", b'{"model":"M1"}'), ("/v1/models/..", b"")]
    assert lua_judge(cases, rules) == [("ok", "hf.co/org/repo:q4"), ("ok", ""), ("two", ""), ("ok", "m1:latest"), ("ok", "")]
    assert lua_judge([("/v1/models/llama3", b"")], rules, ollama=False) == [("ok", "llama3")]


@needs_lua
def test_a_body_it_cannot_read_in_time_is_slow_never_passed() -> None:
    """The scan asks the clock every 4096 units of work (tokens, escapes): a body of many tiny strings, read past its
    time, is "slow" (haproxy.cfg refuses it, 413); a short body is read whatever the clock."""
    tiny = b'{"messages":[' + b'{"role":"user","content":"ab"},' * 3000 + b'{}],"model":"x"}'
    assert lua_judge([(CHAT, tiny), (CHAT, b'{"model":"x"}')], late=True) == [("slow", ""), ("ok", "x:latest")]
    assert lua_judge([(CHAT, tiny)]) == [("ok", "x:latest")]


def lua_widest_pattern_search(body: bytes) -> tuple[str, int, int]:
    """The verdict on `body`, the most bytes one pattern (not plain) search stepped over
    judging it, and how often the clock was asked. string.find is wrapped before the check is
    loaded, so its searches are the ones measured."""
    script = (f"local widest = dofile('{WIDEST_FIND}'); local M = dofile('{LUA_FILE}'); "
              "local body = io.read('a'); local asks = 0; "
              "local verdict = M.judge('/v1/chat/completions', body, {}, true, "
              "function() asks = asks + 1; return false end); "
              "io.write(verdict, ' ', widest(), ' ', asks)")
    out = subprocess.run([str(LUA), "-e", script], input=body, capture_output=True, check=True, timeout=60).stdout.split()
    return out[0].decode(), int(out[1]), int(out[2])


@needs_lua
@pytest.mark.parametrize("body, model, spaces", [
    (b"{" + b"x" * (4 << 20), "", False),                            # no delimiter after the first
    (b'{"a":' + b"7" * (4 << 20) + b',"model":"x"}', "x:latest", False),  # one long number
    (b" " * (4 << 20) + b'{"model":"x"}', "x:latest", True),          # whitespace before the object
    (b'{"model"' + b" " * (4 << 20) + b':"x"}', "x:latest", True),    # between a key and its colon
    (b'{"model":' + b"\t" * (4 << 20) + b'"x"}', "x:latest", True),  # between the colon and the value
], ids=["flat", "number", "leading-space", "space-before-colon", "tab-after-colon"])
def test_no_search_runs_over_a_long_stretch_of_the_body_between_two_questions(body: bytes, model: str, spaces: bool) -> None:
    """Attacker's finding C on issue 16: `{` and 32 MiB of `x` was one class search of 0.4 s,
    which neither the scan's budget nor HAProxy's forced yield can cut, holding every other
    request on the one thread; full body classes of them stalled others 6.1 s. Now delimiters
    are found by plain (memchr) searches, and whitespace in windows of at most 64 KiB, the
    clock asked after each. Here 4 MiB: the old check's widest pattern search was all of it."""
    verdict, widest, asks = lua_widest_pattern_search(body)
    assert widest <= 64 * 1024, widest
    assert lua_judge([(CHAT, body)]) == [("ok", model)] and verdict == "ok"
    if spaces:
        assert asks >= (4 << 20) // (64 * 1024) - 8
        assert lua_judge([(CHAT, body)], late=True) == [("slow", "")]


@needs_lua
def test_comparing_names_is_linear_and_counted_by_their_bytes() -> None:
    """Attacker's pass 10: Ollama's implicit ":latest" was found with the pattern ":[^/]*$",
    which backtracks: 255 colons and a "/" took 32,000 steps, yet a name counted as one unit
    of work, so a body of such pairs asked the clock every 0.55 s and held the proxy's thread
    8 s. The tag is found by plain searches now, and a name counts its bytes. Here the CPU
    time of a slow-shaped name against a plain one of the same length (the old code: some
    100 times), and how often 4,000 such pairs ask the clock (the old code: twice)."""
    script = (f"local M = dofile('{LUA_FILE}'); "
              "local function cpu(name) local t = os.clock(); for _ = 1, 3000 do M.normalize(name, true) end; "
              "return os.clock() - t end; "
              "local slow, plain = cpu(string.rep(':', 255) .. '/'), cpu(string.rep('a', 256)); "
              "local body = '{' .. string.rep('\"model\":\"' .. string.rep(':', 255) .. '/\",', 4000) .. '\"x\":1}'; "
              "local asks = 0; M.judge('/v1/chat/completions', body, {}, true, function() asks = asks + 1; return false end); "
              "io.write(slow / plain, ' ', asks)")
    out = subprocess.run([str(LUA), "-e", script], capture_output=True, check=True, timeout=60).stdout.split()
    assert float(out[0]) < 10, out
    assert int(out[1]) >= 4000 * 256 // 4096 - 8, out
    assert lua_judge([(CHAT, b'{"model":"' + b":" * 255 + b'/"}')]) == [("ok", ":" * 255 + "/:latest")]
    assert modelscan.normalize(":" * 255 + "/", True) == ":" * 255 + "/:latest"


def lua_allocates(body: bytes) -> float:
    """KiB the check allocates judging `body` (the collector stopped, so nothing is freed)."""
    script = (f"local M = dofile('{LUA_FILE}'); local body = io.read('a'); collectgarbage('stop'); "
              "local before = collectgarbage('count'); "
              "M.judge('/v1/chat/completions', body, {}, true, function() return false end); "
              "io.write(collectgarbage('count') - before)")
    return float(subprocess.run([str(LUA), "-e", script], input=body, capture_output=True, check=True, timeout=60).stdout)


@needs_lua
def test_short_strings_full_of_escapes_ask_the_clock_too() -> None:
    """The clock was asked every 4096 tokens, whatever each cost: 21,000 pairs of an escaped
    "model" key and 256 lone-surrogate escapes unescaped for 1.03 s between two questions, past
    the 1 s budget (attacker's finding on issue 16). Escapes and unescaped bytes count now: here
    1,000 pairs (2,000 tokens) are past the budget, where they never asked before."""
    pair = b'"\\u006d\\u006f\\u0064\\u0065\\u006c":"' + b"\\ud83d" * 256 + b'",'
    body = b"{" + pair * 1000 + b'"x":1}'
    assert lua_judge([(CHAT, body)], late=True) == [("slow", "")]
    assert lua_judge([(CHAT, body)]) == [("bad", "not a model name (letters, digits, . _ : / -)")]


@needs_lua
def test_one_long_string_of_escaped_quotes_asks_the_clock_too() -> None:
    """A prompt that is one long run of escaped quotes is a single token: the scan asks the clock
    within it (it read 32 MiB of them for 2 s, past its 1 s budget, until HAProxy cut it)."""
    value = b'{"messages":[{"role":"user","content":"' + b'\\"' * 300_000 + b'"}],"model":"x"}'
    backslashes = b'{"messages":[{"role":"user","content":"' + b"\\\\" * 300_000 + b'"}],"model":"x"}'
    assert lua_judge([(CHAT, value), (CHAT, backslashes)], late=True) == [("slow", ""), ("slow", "")]
    assert lua_judge([(CHAT, value), (CHAT, backslashes)]) == [("ok", "x:latest"), ("ok", "x:latest")]


@needs_lua
def test_a_long_escaped_key_or_value_costs_nothing_to_judge() -> None:
    """A key or value too long to be a model key or name is never copied or unescaped: a 32 MiB
    key of \\u0041 escapes took 4.8 s and 330 MiB of Lua memory to unescape, in every Lua
    state at once, and HAProxy reached 3.3 GB with 12 such bodies."""
    key = b'{"' + b"\\u0041" * 200_000 + b'":1,"model":"smollm2:135m"}'
    value = b'{"model":"' + b"\\u0041" * 200_000 + b'"}'
    assert lua_judge([(CHAT, key), (CHAT, value)]) == [("ok", "smollm2:135m"),
                                                        ("bad", "not a model name (letters, digits, . _ : / -)")]
    assert lua_allocates(key) < 64 and lua_allocates(value) < 64   # KiB: the verdict's own few strings


def lua_peak(body: bytes, lua_file: Path = LUA_FILE) -> tuple[str, float]:
    """The verdict on `body` and the most Lua memory (KiB, after a full collection: what is
    kept, not garbage) above that before judging, sampled whenever the scan asks the clock."""
    script = (f"local M = dofile('{lua_file}'); local body = io.read('a'); collectgarbage('collect'); "
              "local before, peak = collectgarbage('count'), 0; "
              "local function late() collectgarbage('collect'); "
              "peak = math.max(peak, collectgarbage('count') - before); return false end; "
              "local verdict = M.judge('/v1/chat/completions', body, {}, true, late); io.write(verdict, ' ', peak)")
    out = subprocess.run([str(LUA), "-e", script], input=body, capture_output=True, check=True, timeout=60).stdout.split()
    return out[0].decode(), float(out[1])


@needs_lua
def test_many_distinct_names_are_two_at_the_second_and_keep_nothing_more() -> None:
    """Finding F1: the scan kept every distinct name (up to 1536 bytes each) in a list outside
    tune.lua.maxmem's budget, so bodies of long distinct names took Lua out of memory and the
    HAProxy worker down (exit 134). It stops at the second distinct name now: 20,000 of them,
    top-level keys or nested, are "two" with at most two names kept, in Lua and in the twin."""
    pairs = b"".join(b'"model":"m%d-' % i + b"x" * 200 + b'",' for i in range(20_000))
    nested = b'{"model":"a","x":[' + b"".join(b'{"model":"m%d"},' % i for i in range(20_000)) + b'{}],"name":"b"}'
    body = b"{" + pairs + b'"model":"last"}'
    assert lua_judge([(CHAT, body), (CHAT, nested)]) == [("two", ""), ("two", "")]
    verdict, peak = lua_peak(body)
    assert verdict == "two" and peak < 64, peak  # KiB; it kept 5 MiB
    assert modelscan.body_models(body, True) == (["m0-" + "x" * 200 + ":latest", "m1-" + "x" * 200 + ":latest"], None)
    # Too long to be names (over 256 bytes), they are all one: none. Each was kept, 30 MiB.
    long = b"{" + b"".join(b'"model":"m%d-' % i + b"x" * 1500 + b'",' for i in range(20_000)) + b'"model":"last"}'
    verdict, peak = lua_peak(long)
    assert verdict == "two" and peak < 64, peak
    assert modelscan.judge(CHAT, body, [], True) == ("two", None)


@needs_lua
def test_many_spellings_of_one_name_are_one_name_kept_once() -> None:
    """Distinct is as the proxy compares names (case, Ollama's ":latest"): 10,000 spellings of
    one 249-character name (256 with ":latest"), each in other letter cases or escapes, stay "ok" for that name,
    and the scan keeps one of them, not each spelling."""
    rng = random.Random(7)
    spellings = []
    for _ in range(10_000):
        name = bytes(c if rng.random() < 0.5 else c - 32 for c in b"q" * 248)
        spellings.append(b'"model":"' + name + (b'Q"' if rng.random() < 0.5 else b'Q:LATEST"'))
    body = b"{" + b",".join(spellings) + b', "name":"\\u0051' + b"q" * 248 + b'"}'
    want = ("ok", "q" * 249 + ":latest")
    assert lua_judge([(CHAT, body)]) == [want] and modelscan.judge(CHAT, body, [], True) == want
    verdict, peak = lua_peak(body)
    assert verdict == "ok" and peak < 64, peak  # KiB; it kept each spelling, 5 MiB


@needs_lua
def test_two_names_are_two_before_what_the_rest_of_the_body_holds() -> None:
    """The verdict is reached at the second distinct name: what follows (a model that is no
    string, a body cut short) is not read, and both readers agree; one name twice reads on."""
    cases = [b'{"model":"a","name":"b","model":1}', b'{"model":"a","model":"B","x":"unterminated',
             b'{"model":"a","model":"A:latest","model":1}', b'{"model":"a b","model":"c d","model":"e"}']
    want = [("two", ""), ("two", ""), ("bad", "the model must be a string"), ("two", "")]
    assert lua_judge([(CHAT, b) for b in cases]) == want
    assert [modelscan.judge(CHAT, b, [], True) for b in cases] == [(v, d or None) for v, d in want]
    rules = "/api/x/|/y"
    assert lua_judge([("/api/x/m1/y", b'{"model":"m2","model":1}')], rules) == [("two", "")]
    assert modelscan.judge("/api/x/m1/y", b'{"model":"m2","model":1}', [("/api/x/", "/y")], True) == ("two", None)


@needs_lua
def test_what_is_too_long_to_be_a_name_is_not_unescaped() -> None:
    """A key can read "model" only within 30 bytes (\\u006d\\u006f\\u0064\\u0065\\u006c), a value
    can be a name only within 6 × 256 bytes: longer ones are judged without being copied."""
    escaped = b"".join(b"\\u%04x" % c for c in b"model")
    name = b"".join(b"\\u%04x" % c for c in b"a" * 256)
    cases = [(CHAT, b'{"' + escaped + b'":"x"}'), (CHAT, b'{"model":"' + name + b'"}'),
             (CHAT, b'{"model":"' + name + b'a"}'), (CHAT, b'{"model":"' + b"\\u0041" * 5000 + b'"}')]
    want = [("ok", "x:latest"), ("ok", "a" * 256 + ":latest"), ("bad", "not a model name (letters, digits, . _ : / -)"),
            ("bad", "not a model name (letters, digits, . _ : / -)")]
    assert lua_judge(cases) == want
    assert [modelscan.judge(p, b, [], True) for p, b in cases] == [tuple(v or None for v in w) for w in want]


# -- generated bodies ------------------------------------------------------------------------

KEYS = [b'"model"', b'"MODEL"', b'"Model"', b'"mod\\u0065l"', b'"m\\u006fdel"', b'"name"', b'"NAME"', b'"nAmE"',
        b'"messages"', b'"stream"', b'"modeL"', b'"model "', b'"mode"', b'"models"', b'"\\u006dodel"', b'"model\\u0000"',
        b'"mod\\el"', b'"n\\u0061me"', b'"options"',
        b'"\\u006d\\u006f\\u0064\\u0065\\u006c"', b'"\\u006d\\u006f\\u0064\\u0065\\u006c\\u0020"']
NAMES = [b'"qwen2.5-coder:32b"', b'"QWEN2.5-CODER:32B"', b'"llama3"', b'"llama3:latest"', b'"smollm2:135m"',
         b'"hf.co/org/repo:Q4_K_M"', b'"a"', b'"A"', b'""', b'"a b"', b'"qw\\u0065n:7b"', b'"x\\"y"', b'"\\\\"',
         b'"\\ud83d\\ude00"', b'"\\ud800"', b'"caf\xc3\xa9"', b'"\xff"', b'"l\\/m"', b'"\\u0041"',
         b'"' + b"\\u0061" * 256 + b'"', b'"' + b"\\u0061" * 257 + b'"']
SCALARS = [b"null", b"1", b"-2.5e3", b"true", b"false", b'"text with { and ] and \\" inside"', b'"\\n\\t"', b'"}"',
           b'"\\\\\\""', b'"model"', b"[]", b"{}"]
SPACES = [b"", b" ", b"\n", b"\t", b"\r\n  "]
TAILS = [b"", b" ", b' {"model":"evil"}', b"garbage", b"]", b"}", b"\x00"]
HEADS = [b"", b"\xef\xbb\xbf", b" ", b"[", b"x"]


def random_value(rng: random.Random, depth: int) -> bytes:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return random_object(rng, depth + 1)
    if depth < 3 and roll < 0.3:
        return b"[" + b",".join(random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + b"]"
    return rng.choice(NAMES if roll < 0.7 else SCALARS)


def random_object(rng: random.Random, depth: int = 0) -> bytes:
    members = [rng.choice(SPACES) + rng.choice(KEYS) + rng.choice(SPACES) + b":" + rng.choice(SPACES)
               + random_value(rng, depth) + rng.choice(SPACES) for _ in range(rng.randint(0, 5))]
    return b"{" + b",".join(members) + b"}"


def random_body(rng: random.Random) -> bytes:
    """A request body from the pieces that trip readers up: keys in other cases and escaped,
    model names with escapes and bad UTF-8, nesting, strings full of brackets and quotes,
    something after the object, something before it, or the body cut short."""
    body = random_object(rng)
    roll = rng.random()
    if roll < 0.15:
        return body + rng.choice(TAILS)
    if roll < 0.25:
        return rng.choice(HEADS) + body
    if roll < 0.35:
        return body[:rng.randint(0, len(body))]
    return body


def generated(seed: int, count: int) -> list[bytes]:
    """`count` bodies, the same ones for the same seed: a failure names its seed and body."""
    rng = random.Random(seed)
    return [random_body(rng) for _ in range(count)]


@needs_lua
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_python_twin_judges_as_the_lua_does(seed: int) -> None:
    """The policy model (access/policy.py) reads bodies with modelscan; the proxy with the Lua.
    3 × 2,000 generated bodies."""
    bodies = generated(seed, 2000)
    for body, (verdict, detail) in zip(bodies, lua_judge([(CHAT, b) for b in bodies]), strict=True):
        twin, twin_detail = modelscan.judge(CHAT, body, [], True)
        assert (twin, twin_detail or "") == (verdict, detail), (seed, body)


@pytest.fixture(scope="module")
def go_decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/gojson built with Debian's golang-go (standard library only, no network)."""
    if GO is None:
        pytest.skip("needs Debian's golang-go (.ci/dev test installs it)")
    work = tmp_path_factory.mktemp("gojson")
    shutil.copy(ROOT / "tests" / "gojson" / "main.go", work / "main.go")
    (work / "go.mod").write_text("module gojson\n\ngo 1.19\n")
    env = {**os.environ, "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath"), "GOFLAGS": "-mod=mod",
           "GOPROXY": "off", "CGO_ENABLED": "0"}
    subprocess.run([GO, "build", "-o", str(work / "decode"), "."], cwd=work, env=env, check=True, capture_output=True,
                   timeout=300)
    yield work / "decode"


def go_read(decoder: Path, bodies: list[bytes]) -> list[dict]:
    out = subprocess.run([str(decoder)], input=b"".join(frame(b) for b in bodies), capture_output=True, check=True,
                         timeout=120).stdout
    return [json.loads(line) for line in out.splitlines()]


@needs_lua
@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_what_the_check_lets_through_names_what_go_reads(go_decoder: Path, seed: int) -> None:
    """5 × 2,000 generated bodies, each read by the Lua and by Go: a body the check passes as
    naming model M (or none) is one Go decodes with M (or nothing) in every field the engine
    reads a model from. Where they differ the check refuses ("two", 400) or names nothing it
    can judge by ("bad": a restricted client is refused); never a different model."""
    bodies = generated(seed, 2000)
    lua = lua_judge([(CHAT, b) for b in bodies])
    decoded = go_read(go_decoder, bodies)
    passed = 0
    for body, (verdict, detail), go in zip(bodies, lua, decoded, strict=True):
        if not go["ok"] or verdict != "ok":
            continue
        passed += 1
        named = [n for n in (go["model"], go["name"]) if n]
        if detail == "":
            assert named == [], (seed, body, go)
        else:
            assert all(modelscan.normalize(n.encode("utf-8", "surrogatepass"), True) == detail for n in named), (seed, body, go)
    assert passed > 500  # the generator reaches bodies both accept, not only broken ones


@needs_lua
def test_go_reads_the_tricky_cases_as_the_check_assumes(go_decoder: Path) -> None:
    """What the check's design rests on, asked of Go itself."""
    cases = [b'{"model":"a","MODEL":"b"}', b'{"MODEL":"b","model":"a"}', b'{"mod\\u0065l":"x"}', b'{"model":null}',
             b'{"model":"a"} {"model":"b"}', b'[{"model":"a"}]', b'{"Name":"s"}', b'{"model":1}']
    assert [(g["ok"], g["model"], g["name"]) for g in go_read(go_decoder, cases)] == [
        (True, "b", ""), (True, "a", ""), (True, "x", ""), (True, "", ""), (True, "a", ""), (False, "", ""),
        (True, "", "s"), (False, "", "")]
