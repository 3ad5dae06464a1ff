"""Each ai-server.toml key is declared once, in config.py; the shipped file and the key tables in
docs/configuration.md are held to that declaration, and the parser is driven by it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_server import config
from ai_server.base import tomlfile, tomlkeys
from ai_server.base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = tomlfile.default_text("ai-server.toml")
_HEADER = re.compile(r"^(?:#\s*)?(\[\[?)([a-z_]+)\]\]?\s*$")
_KEY = re.compile(r"^(#\s*)?([a-z_]+)\s*=\s*(.+)$")


@dataclass
class Line:
    table: str
    key: str
    value: str
    commented: bool
    group_comment: str    # the comment block above the run of key lines this one is in
    first_in_group: bool


def shipped_lines(text: str) -> list[Line]:
    """Every `key = value` and `# key = value` line of the shipped file, with its table."""
    found: list[Line] = []
    table, comment, in_group = "", "", False
    for raw in text.splitlines():
        line = raw.strip()
        header, key = _HEADER.match(line), _KEY.match(line)
        if header:
            # A commented header is an example ([[node]]): the comment above it is its keys'.
            table, comment, in_group = header.group(2), comment if line.startswith("#") else "", False
        elif key and table:
            found.append(Line(table, key.group(2), key.group(3), bool(key.group(1)), comment, not in_group))
            in_group = True
        elif line.startswith("#"):
            comment = (comment if not in_group else "") + line + "\n"
            in_group = False
        else:
            comment, in_group = "", False
    return found


NODE = {"name": "studio-2", "url": "http://100.64.0.2:11434"}


def keys_of(table: str) -> list[tomlkeys.Declared]:
    return next(t.keys for t in tomlkeys.tables(config.Config) if t.name == table)


def declared() -> dict[tuple[str, str], tomlkeys.Declared]:
    return {(t.name, k.name): k for t in tomlkeys.tables(config.Config) for k in t.keys}


def test_every_key_in_the_shipped_file_is_declared_and_every_declared_key_is_there() -> None:
    lines = shipped_lines(SHIPPED)
    assert sorted((line.table, line.key) for line in lines) == sorted(declared())


def test_the_shipped_file_shows_each_default() -> None:
    keys = declared()
    for line in shipped_lines(SHIPPED):
        k = keys[(line.table, line.key)]
        if k.key.required:
            continue  # an example ([[node]]): there is no default to show
        value = tomllib.loads(f"v = {line.value.split(' #')[0]}")["v"]
        assert value == k.toml_default, f"[{line.table}] {line.key}: the file says {value!r}, config.py {k.toml_default!r}"


def test_each_key_in_the_shipped_file_has_a_comment() -> None:
    for line in shipped_lines(SHIPPED):
        assert line.group_comment, f"[{line.table}] {line.key} has no comment above it"
        assert line.first_in_group or line.key in line.group_comment, (
            f"[{line.table}] {line.key} shares the comment above {line.table}'s previous key, which does not name it")


def test_the_shipped_file_is_the_defaults() -> None:
    assert config.parse_config(SHIPPED) == config.Config()


def test_the_docs_key_tables_are_the_declarations() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert config.with_key_tables(docs) == docs, "run: .venv/bin/python -m ai_server.config docs/configuration.md"
    for t in tomlkeys.tables(config.Config):
        for k in t.keys:
            assert f"| `{k.name}` |" in docs


def test_every_key_has_a_one_line_doc() -> None:
    for (table, name), k in declared().items():
        assert k.key.doc and "\n" not in k.key.doc and len(k.key.doc) <= 140, f"[{table}] {name}"


@pytest.mark.parametrize("table, name", sorted(declared()))
def test_every_key_refuses_a_wrong_type_naming_file_line_and_key(table: str, name: str) -> None:
    k = declared()[(table, name)]
    wrong = '"text"' if str not in k.kinds else "[1]"
    header = f"[[{table}]]" if table == "node" else f"[{table}]"
    # The other keys an entry must have, valid, after the wrong one.
    rest = "".join(f'{o.name} = "{NODE[o.name]}"\n' for o in keys_of(table) if o.key.required and o.name != name)
    with pytest.raises(ConfigError) as info:
        config.parse_config(f"{header}\n{name} = {wrong}\n{rest}", "ai-server.toml")
    where = f"{table}[0].{name}" if table == "node" else f"{table}.{name}"
    assert (info.value.file, info.value.line, info.value.key) == ("ai-server.toml", 2, where)
    assert "expected" in str(info.value)


def test_a_new_key_is_one_declaration() -> None:
    """The mechanism other tables use: a dataclass of key() fields read by tomlkeys.read."""
    @dataclass(frozen=True)
    class Example:
        keep_days: int = tomlkeys.key(400, "days of history kept", check=lambda v: None if v >= 1 else "must be at least 1")
        zone: str = tomlkeys.key("local", "when days begin")

    text = "[usage]\nkeep_days = 30\n"
    got = tomlkeys.read(Example, tomlfile.Table(tomllib.loads(text)["usage"], "usage", text, "ai-server.toml"))
    assert got == Example(keep_days=30)
    bad = "[usage]\nkeep_days = 0\n"
    with pytest.raises(ConfigError, match=r"ai-server.toml:2: usage.keep_days: must be at least 1"):
        tomlkeys.read(Example, tomlfile.Table(tomllib.loads(bad)["usage"], "usage", bad, "ai-server.toml"))
