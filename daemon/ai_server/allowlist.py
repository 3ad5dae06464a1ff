"""The allowlist, compiled: rules to regexes and HAProxy ACL lines; tomlkit edits that keep comments.

The matching is deliberately literal. HAProxy forwards the request target exactly as the client
sent it, and the rules match that raw path: a path with %-escapes, backslashes, ';', '//' or
dot segments matches no rule and is refused, rather than normalised in a way the engine might
not agree with. The only flexibility is {model}, which stands for one model name.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import tomlkit
from tomlkit.items import AoT

from ai_server.config import (MODEL_PLACEHOLDER, METHODS, Allowlist, Rule, check_rule_path, default_text,
                              is_management, parse_allowlist)
from ai_server.errors import ConfigError
from ai_server.files import write_keeping_mode

# One model name: `qwen2.5-coder:32b`, `hf.co/org/repo:Q4_K_M`, `registry:5000/ns/m:tag`.
# Each segment starts with a letter, digit or _, so `.` and `..` can never be one. Written in
# POSIX ERE so HAProxy builds without PCRE read it the same way.
_SEGMENT = "[A-Za-z0-9_][A-Za-z0-9._:-]*"
MODEL_REGEX = f"{_SEGMENT}(/{_SEGMENT}){{0,3}}"


def _literal(text: str) -> str:
    # [.] rather than \. : HAProxy's config parser treats backslashes itself.
    return "".join("[.]" if ch == "." else ch for ch in text)


def path_regex(path: str) -> str:
    """Anchored ERE matching the raw path (no query) that `path` allows."""
    before, found, after = path.partition(MODEL_PLACEHOLDER)
    if not found:
        return "^" + _literal(path) + "$"
    return "^" + _literal(before) + MODEL_REGEX + _literal(after) + "$"


@functools.lru_cache(maxsize=512)
def _compiled(rule_path: str) -> re.Pattern[str]:
    return re.compile(path_regex(rule_path)[1:-1])


def matches(rule: Rule, path: str) -> bool:
    return _compiled(rule.path).fullmatch(path) is not None


def decide(allowlist: Allowlist, method: str, target: str) -> int:
    """What the proxy answers for a request line, before the engine: 0 (forward), 400, 403 or 405.

    A request is forwarded when any rule whose path matches allows its method; 405 when rules
    match the path but none allows the method; 403 when none matches, and always for model
    management. The generated haproxy.cfg decides the same; tests check one against the other,
    for the shipped list and for generated ones."""
    if not target.startswith("/"):
        return 400
    path = target.split("?", 1)[0]
    if is_management(path):
        return 403
    matching = [rule for rule in allowlist.rules if matches(rule, path)]
    if not matching:
        return 403
    return 0 if any(method in rule.methods for rule in matching) else 405


def route(allowlist: Allowlist, path: str) -> str:
    """The rule a request path falls under (its path, {model} and all), for metric labels: a
    bounded set, whatever clients send. "other" when no rule matches."""
    return next((rule.path for rule in allowlist.rules if matches(rule, path)), "other")


def allowed_methods(allowlist: Allowlist, path: str) -> list[str]:
    """The methods some rule allows on `path`, in the order a 405's Allow header lists them."""
    found = {m for rule in allowlist.rules if matches(rule, path) for m in rule.methods}
    return [m for m in METHODS if m in found]


# ---------------------------------------------------------------------------------------------
# Editing allowlist.toml with tomlkit, keeping the user's comments and layout.


def _document(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = default_text("allowlist.toml")
    parse_allowlist(text, str(path))  # refuse to edit a file that is already broken
    return tomlkit.parse(text)


def _write(path: Path, document: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(document)
    parse_allowlist(text, str(path))
    write_keeping_mode(path, text)


def add_rule(path: Path, rule_path: str, methods: list[str]) -> str:
    """Allow `methods` on `rule_path`, merging into an existing rule. Returns what changed."""
    problem = check_rule_path(rule_path)
    if problem:
        raise ConfigError(str(path), f"{rule_path!r} {problem}", key="path")
    wanted = [m.upper() for m in methods]
    for method in wanted:
        if method not in METHODS:
            raise ConfigError(str(path), f"{method!r} is not a method a rule may allow ({', '.join(METHODS)})", key="methods")
    document = _document(path)
    rules = document.get("allow")
    if rules is None:
        rules = AoT([])
        document["allow"] = rules
    for table in rules:
        if table["path"] == rule_path:
            present = [str(m).upper() for m in table["methods"]]
            added = [m for m in wanted if m not in present]
            if not added:
                return f"{rule_path} already allows {', '.join(present)}"
            for method in added:
                table["methods"].append(method)
            _write(path, document)
            return f"{rule_path} now allows {', '.join(present + added)}"
    table = tomlkit.table()
    table["path"] = rule_path
    table["methods"] = list(dict.fromkeys(wanted))
    rules.append(table)
    _write(path, document)
    return f"allowed {', '.join(dict.fromkeys(wanted))} {rule_path}"


def remove_rule(path: Path, rule_path: str) -> str:
    document = _document(path)
    rules = document.get("allow") or []
    for index, table in enumerate(rules):
        if table["path"] == rule_path:
            del rules[index]
            _write(path, document)
            return f"removed {rule_path}"
    raise ConfigError(str(path), f"no rule has path {rule_path!r}", key="path")
