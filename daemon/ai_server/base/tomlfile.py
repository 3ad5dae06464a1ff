"""Reading TOML config files: safely off disk, parsed with tomllib, and typed reads from a table
that remember which keys were used, with the line each key stands on so errors can name it.

tomllib gives values without positions; a small scan of the text is enough for the shapes our
files use: `[table]`, `[[array]]` and `key = value` lines.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ai_server.base.errors import ConfigError

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")


def line_of(text: str, table: str | None, key: str | None = None, index: int | None = None) -> int | None:
    """1-based line of `key` inside `[table]` (or the `index`-th `[[table]]`); the header's line when key is None."""
    seen = -1
    header_line: int | None = None
    inside = table is None
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            name = header.group(2).replace('"', "").replace("'", "").strip()
            if header.group(1) == "[[" and name == table:
                seen += 1
            inside = name == table and (index is None or seen == index)
            if inside:
                header_line = number
                if key is None:
                    return number
            continue
        if inside and key is not None:
            match = _KEY.match(raw)
            if match and key in match.groups():
                return number
    return header_line


def toml_string(value: str) -> str:
    """`value` as a TOML string that reads back as exactly `value`, whatever bytes it holds."""
    import tomlkit

    return tomlkit.string(value).as_string()


def default_text(name: str) -> str:
    """The shipped, commented default of `name` (config/ in the repo, inside the wheel)."""
    return resources.files("ai_server").joinpath("defaults", name).read_text(encoding="utf-8")


MAX_CONFIG_BYTES = 1 << 20


def read_text(path: Path) -> tuple[str, str]:
    """(text, label) of a config file, or the shipped default when the file does not exist.

    Opened without blocking and checked before it is read: a FIFO, a device or a folder in its
    place, or a file over 1 MiB, is a ConfigError, never a hang or a huge read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return default_text(path.name), f"{path.name} (shipped default)"
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), "is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), f"is {info.st_size} bytes; a config file may hold at most {MAX_CONFIG_BYTES}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), f"holds more than {MAX_CONFIG_BYTES} bytes")
    try:
        return raw.decode("utf-8"), str(path)
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"cannot read: not UTF-8 ({err.reason} at byte {err.start})") from None


def parse_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(found.group(1)) if found else None
        if line is None and "end of document" in message:
            line = max(1, len(text.splitlines()))
        message = re.sub(r"\s*\((at line \d+, column \d+|at end of document)\)", "", message)
        raise ConfigError(label, f"invalid TOML: {message}", line=line) from None


class Table:
    """Typed reads from one TOML table that remember which keys were used."""

    def __init__(self, data: dict[str, Any], name: str, text: str, label: str, index: int | None = None):
        self.data, self.name, self.text, self.label, self.index = data, name, text, label, index
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> ConfigError:
        line = line_of(self.text, self.name, key, self.index) or line_of(self.text, self.name, None, self.index)
        where = self.name if self.index is None else f"{self.name}[{self.index}]"
        return ConfigError(self.label, message, line=line, key=f"{where}.{key}")

    def get(self, key: str, default: Any, kind: type | tuple[type, ...], check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints to Python; never accept one for a number.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_type_name(k) for k in kinds)
            raise self.fail(key, f"expected {names}, got {_type_name(type(value))} {value!r}")
        problem = check(value) if check else None
        if problem:
            raise self.fail(key, problem)
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown key")


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(kind, kind.__name__)
