"""TOML tables declared as frozen dataclasses: each key is one field, `key(default, doc, ...)`,
holding its default, its check and its one-line doc. `read` fills a dataclass from a table (a
tomlfile.Table: errors name file, line and key); `toml_value` writes a default back as TOML
and `markdown` the key tables for the docs, both from the same declarations.

A field made with dataclasses.field() and no `key()` is not a key (a value derived from
others); `table()` fields of a root dataclass are its `[table]`s (with array=True, `[[table]]`s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ai_server.base.tomlfile import Table

Check = Callable[[Any], "str | None"]
_KEY, _TABLE = "ai_server.key", "ai_server.table"
_ABSENT = object()


@dataclass(frozen=True)
class Key:
    doc: str
    check: Check | None = None
    toml: str | None = None                      # its name in the file, when not the field's
    kinds: tuple[type, ...] = ()                 # TOML types accepted; () = as the default's
    read: Callable[[Any], Any] | None = None     # TOML value -> field value
    write: Callable[[Any], Any] | None = None    # field value -> TOML value
    shown: str | None = None                     # the default as the docs say it, when not a value
    required: bool = False


@dataclass(frozen=True)
class Declared:
    """One key of one table, as the parser, the docs and the shipped file's test see it."""
    field: str
    name: str
    default: Any          # the field's default (dataclasses.MISSING when required)
    key: Key

    @property
    def kinds(self) -> tuple[type, ...]:
        if self.key.kinds:
            return self.key.kinds
        kind = type(self.default)
        return {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (list,),
                dict: (dict,)}.get(kind, (kind,))

    def from_toml(self, value: Any) -> Any:
        if self.key.read is not None:
            return self.key.read(value)
        if isinstance(self.default, float):
            return float(value)
        if isinstance(self.default, tuple):
            return tuple(value)
        return value

    @property
    def toml_default(self) -> Any:
        """The default as the file writes it."""
        if self.key.required:
            return None
        value = self.key.write(self.default) if self.key.write is not None else self.default
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value


def key(default: Any = dataclasses.MISSING, doc: str = "", **how: Any) -> Any:
    """A key: `default` is what the program uses when the file does not set it. Leave it out
    for a key every entry must have, as [[node]] name, and say its `kinds`."""
    spec = Key(doc, required=default is dataclasses.MISSING, **how)
    if spec.required and not spec.kinds:
        raise TypeError("a key without a default needs kinds=")
    return dataclasses.field(default=default, metadata={_KEY: spec})


def table(cls: type, doc: str, toml: str | None = None, array: bool = False) -> Any:
    """A `[table]` (or, with array, `[[table]]`s) of a root dataclass."""
    spec = {"cls": cls, "doc": doc, "toml": toml, "array": array}
    if array:
        return dataclasses.field(default=(), metadata={_TABLE: spec})
    return dataclasses.field(default_factory=cls, metadata={_TABLE: spec})


@dataclass(frozen=True)
class DeclaredTable:
    field: str
    name: str
    cls: type
    doc: str
    array: bool

    @property
    def keys(self) -> list[Declared]:
        return keys(self.cls)


def keys(cls: type) -> list[Declared]:
    """The declared keys of a table's dataclass, in declaration order."""
    found = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is not None:
            found.append(Declared(f.name, spec.toml or f.name, f.default, spec))
    return found


def tables(root: type) -> list[DeclaredTable]:
    found = []
    for f in dataclasses.fields(root):
        spec = f.metadata.get(_TABLE)
        if spec is not None:
            found.append(DeclaredTable(f.name, spec["toml"] or f.name, spec["cls"], spec["doc"], spec["array"]))
    return found


def read(cls: type, t: Table) -> Any:
    """`cls` filled from table `t`, each key checked as declared; unknown keys refused."""
    values = {}
    for declared in keys(cls):
        raw = t.get(declared.name, _ABSENT, declared.kinds, declared.key.check)
        if raw is _ABSENT:
            if declared.key.required:
                raise t.fail(declared.name, f"missing: every [[{t.name}]] has {_needed(cls)}")
            continue
        values[declared.field] = declared.from_toml(raw)
    t.finish()
    return cls(**values)


def _needed(cls: type) -> str:
    names = [d.name for d in keys(cls) if d.key.required]
    return " and ".join(f"a {n}" for n in names)


def toml_value(value: Any) -> str:
    """`value` written as TOML (a default, for the docs)."""
    import tomlkit

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(tomlkit.item(value).as_string())


def markdown(root: type) -> str:
    """A table of keys (name, default, doc) for each [table] of `root`, from the declarations."""
    out = []
    for t in tables(root):
        header = f"[[{t.name}]]" if t.array else f"[{t.name}]"
        out += [f"`{header}`: {t.doc}.", "", "| key | default | what it does |", "| --- | --- | --- |"]
        for k in t.keys:
            default = "(required)" if k.key.required else k.key.shown or f"`{toml_value(k.toml_default)}`"
            doc = k.key.doc.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f"| `{k.name}` | {default} | {doc} |")
        out.append("")
    return "\n".join(out).rstrip("\n")


def with_markdown(document: str, root: type, begin: str, end: str) -> str:
    """`document` with the text between the `begin` and `end` lines replaced by markdown(root)."""
    before, _, rest = document.partition(begin)
    _, found, after = rest.partition(end)
    if not found:
        raise ValueError(f"no key tables here: the document needs the lines {begin!r} and {end!r}")
    return f"{before}{begin}\n{markdown(root)}\n{end}{after}"
