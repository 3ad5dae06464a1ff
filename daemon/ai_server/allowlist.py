"""The allowlist, compiled: rules to regexes and HAProxy ACL lines; tomlkit edits that keep comments.

The matching is deliberately literal. HAProxy forwards the request target exactly as the client
sent it, and the rules match that raw path: a path with %-escapes, backslashes, ';', '//' or
dot segments matches no rule and is refused, rather than normalised in a way the engine might
not agree with. The only flexibility is {model}, which stands for one model name.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table

from ai_server.config import MODEL_PLACEHOLDER, METHODS, Allowlist, Rule, check_rule_path, default_text, parse_allowlist
from ai_server.errors import ConfigError

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


def matches(rule: Rule, path: str) -> bool:
    return re.fullmatch(path_regex(rule.path)[1:-1], path) is not None


def decide(allowlist: Allowlist, method: str, target: str) -> int:
    """What the proxy answers for a request line, before the engine: 0 (forward), 400, 403 or 405.

    The same decision the generated haproxy.cfg makes; tests check one against the other.
    """
    if not target.startswith("/"):
        return 400
    path = target.split("?", 1)[0]
    for rule in allowlist.rules:
        if matches(rule, path):
            return 0 if method in rule.methods else 405
    return 403


def acl_lines(allowlist: Allowlist) -> list[str]:
    """HAProxy lines for the frontend: one ACL per rule, then 403 and 405 answers."""
    lines: list[str] = []
    names = []
    for index, rule in enumerate(allowlist.rules):
        name = f"allow_{index}"
        names.append(name)
        where = f" (allowlist.toml line {rule.line})" if rule.line else ""
        lines.append(f"# {' '.join(rule.methods)} {rule.path}{where}")
        if MODEL_PLACEHOLDER in rule.path:
            lines.append(f"acl {name} path_reg '{path_regex(rule.path)}'")
        else:
            lines.append(f"acl {name} path {rule.path}")
    forbidden = "'{\"error\":\"forbidden: this endpoint is not on the ai-server allowlist\"}'"
    if names:
        lines.append("# Anything no rule matches: 403.")
        lines.append(f"http-request return status 403 content-type application/json string {forbidden} "
                     f"if {' '.join('!' + n for n in names)}")
    else:
        lines.append("# The allowlist is empty: every request gets 403.")
        lines.append(f"http-request return status 403 content-type application/json string {forbidden}")
    lines.append("# A rule's path with a method it does not list: 405, with the methods it does.")
    for name, rule in zip(names, allowlist.rules):
        methods = " ".join(rule.methods)
        body = "'{\"error\":\"method not allowed: use " + ", ".join(rule.methods) + "\"}'"
        lines.append(f'http-request return status 405 content-type application/json string {body} '
                     f'hdr Allow "{", ".join(rule.methods)}" if {name} !{{ method {methods} }}')
    return lines


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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, as editors do: the watcher sees one complete file, never half of one.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


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
