"""The metering filter's Lua tables are the Python ones: a count the Lua reports under a code
the supervisor does not know (or the other way round) would be lost silently."""

from __future__ import annotations

import re

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
