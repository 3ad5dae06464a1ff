"""The allowlist, compiled: rules to regexes and HAProxy ACL lines; tomlkit edits that keep comments.

The matching is deliberately literal. HAProxy forwards the request target exactly as the client
sent it, and the rules match that raw path: a path with %-escapes, backslashes, ';', '//' or
dot segments matches no rule and is refused, rather than normalised in a way the engine might
not agree with. The only flexibility is {model}, which stands for one model name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Whitespace

from ai_server.base.errors import ConfigError
from ai_server.base.files import write_keeping_mode
from ai_server.base.tomlfile import default_text, line_of, parse_toml, read_text

# Methods a rule may list. CONNECT and TRACE are never forwarded: they only help attackers.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MODEL_PLACEHOLDER = "{model}"


@dataclass(frozen=True)
class Rule:
    path: str
    methods: tuple[str, ...]
    line: int | None = None


@dataclass(frozen=True)
class Allowlist:
    rules: tuple[Rule, ...] = ()

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
# Validation: allowlist.toml

# A rule's literal characters: a subset of RFC 3986's path characters. Anything else (%, \\,
# ;, spaces, control bytes...) could mean one thing to HAProxy and another to the engine, or
# change the syntax of the maps the rules are compiled into, so it cannot be written at all.
_PATH_CHARS = re.compile(r"[A-Za-z0-9._~/:-]*")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]|\s")
# What a rule may never let through, whatever its path: endpoints that download, write, copy
# or delete models. ai-server pulls for you (`ai-server warm`), on loopback.
MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
MANAGEMENT_PREFIXES = ("/api/blobs/",)
# Paths a {model} rule is tried against: each management endpoint, and a blob.
MANAGEMENT_PROBES = MANAGEMENT + ("/api/blobs/sha256:" + "0" * 64,)


def is_management(path: str) -> bool:
    return path in MANAGEMENT or path.startswith(MANAGEMENT_PREFIXES)


def check_rule_path(path: str) -> str | None:
    """Why `path` cannot be a rule, or None. Judged on the whole string: a trailing newline is
    refused like any other byte outside the grammar."""
    if _SPACE_OR_CONTROL.search(path):
        return "holds whitespace or a control character"
    if not path.startswith("/"):
        return "must start with /"
    literal = path.replace(MODEL_PLACEHOLDER, "m")
    if "{" in literal or "}" in literal:
        return "the only placeholder is {model}"
    if path.count(MODEL_PLACEHOLDER) > 1:
        return "may hold {model} at most once"
    if _PATH_CHARS.fullmatch(literal) is None:
        return "may hold only letters, digits and . _ ~ / : - (and {model})"
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments):
        return "must not hold . or .. segments"
    if "//" in path:
        return "must not hold //"
    if MODEL_PLACEHOLDER in path and not re.fullmatch(r"(/[^/]+)*/\{model\}(/[^/]+)*", path):
        return "{model} must stand as a whole path segment, e.g. /v1/models/{model}"
    reached = [p for p in MANAGEMENT_PROBES if re.fullmatch(path_regex(path)[1:-1], p)]
    if reached:
        return (f"would reach {reached[0].rstrip('0') + ('...' if reached[0].endswith('0') else '')}: model management "
                "is never forwarded (pull with `ai-server warm MODEL`)")
    return None


def parse(text: str, label: str = "allowlist.toml") -> Allowlist:
    data = parse_toml(text, label)
    for name in data:
        if name != "allow":
            raise ConfigError(label, "unknown key; rules go in [[allow]] tables",
                              line=line_of(text, name) or line_of(text, None, name), key=name)
    entries = data.get("allow", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(label, "must be [[allow]] tables", line=line_of(text, None, "allow"), key="allow")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        here = line_of(text, "allow", None, index)

        def fail(key: str, message: str, index: int = index, here: int | None = here) -> ConfigError:
            return ConfigError(label, message, line=line_of(text, "allow", key, index) or here,
                               key=f"allow[{index}].{key}")

        for key in entry:
            if key not in ("path", "methods"):
                raise fail(key, "unknown key; a rule has path and methods")
        path = entry.get("path")
        if not isinstance(path, str):
            raise fail("path", "missing or not a string")
        problem = check_rule_path(path)
        if problem:
            raise fail("path", f"{path!r} {problem}")
        if path in seen:
            raise fail("path", f"{path!r} is already allowed by rule {seen[path]}; list all its methods there")
        seen[path] = index
        methods = entry.get("methods")
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise fail("methods", "must be a non-empty array of HTTP methods, e.g. [\"POST\"]")
        upper = tuple(dict.fromkeys(m.upper() for m in methods))
        for method in upper:
            if method not in METHODS:
                raise fail("methods", f"{method!r} is not a method a rule may allow ({', '.join(METHODS)})")
        rules.append(Rule(path=path, methods=upper, line=here))
    return Allowlist(rules=tuple(rules))

def read(config_dir: Path) -> Allowlist:
    text, label = read_text(config_dir / "allowlist.toml")
    return parse(text, label)


# ---------------------------------------------------------------------------------------------
# Editing allowlist.toml with tomlkit, keeping the user's comments and layout.


def _document(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = default_text("allowlist.toml")
    parse(text, str(path))  # refuse to edit a file that is already broken
    return tomlkit.parse(text)


def _write(path: Path, document: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(document)
    parse(text, str(path))
    write_keeping_mode(path, text)


def add_rule(path: Path, rule_path: str, methods: list[str]) -> str:
    """Allow `methods` on `rule_path`, merging into an existing rule. Returns what changed."""
    return add_rules(path, [(rule_path, methods, None)])[0]


def add_rules(path: Path, wanted: list[tuple[str, list[str], str | None]]) -> list[str]:
    """Allow each (path, methods, comment), merging into existing rules, in one write: all of
    them or, on any bad one, none. A new rule's path line carries the comment. What changed."""
    for rule_path, methods, _ in wanted:
        problem = check_rule_path(rule_path)
        if problem:
            raise ConfigError(str(path), f"{rule_path!r} {problem}", key="path")
        for method in methods:
            if method.upper() not in METHODS:
                raise ConfigError(str(path), f"{method!r} is not a method a rule may allow ({', '.join(METHODS)})",
                                  key="methods")
    document = _document(path)
    rules = document.get("allow")
    if rules is None:
        rules = AoT([])
        document["allow"] = rules
    changes = [_merge(rules, rule_path, [m.upper() for m in methods], comment) for rule_path, methods, comment in wanted]
    if any(changed for changed, _ in changes):
        _write(path, document)
    return [said for _, said in changes]


def _merge(rules: AoT, rule_path: str, wanted: list[str], comment: str | None) -> tuple[bool, str]:
    for table in rules:
        if table["path"] == rule_path:
            present = [str(m).upper() for m in table["methods"]]
            added = [m for m in dict.fromkeys(wanted) if m not in present]
            if not added:
                return False, f"{rule_path} already allows {', '.join(present)}"
            for method in added:
                table["methods"].append(method)
            return True, f"{rule_path} now allows {', '.join(present + added)}"
    table = tomlkit.table()
    table["path"] = rule_path
    if comment:
        table["path"].comment(comment)
    table["methods"] = list(dict.fromkeys(wanted))
    # Blank lines around it, as between the shipped rules.
    if len(rules) and not isinstance(rules[-1].value.body[-1][1], Whitespace):
        rules[-1].add(tomlkit.nl())
    table.add(tomlkit.nl())
    rules.append(table)
    return True, f"allowed {', '.join(dict.fromkeys(wanted))} {rule_path}"


def remove_rule(path: Path, rule_path: str) -> str:
    document = _document(path)
    rules = document.get("allow") or []
    for index, table in enumerate(rules):
        if table["path"] == rule_path:
            del rules[index]
            if index == len(rules) and len(rules):
                # The blank line add_rules put after what is now the last rule: the file ends as it did.
                body = rules[-1].value.body
                while body and isinstance(body[-1][1], Whitespace):
                    body.pop()
            _write(path, document)
            return f"removed {rule_path}"
    raise ConfigError(str(path), f"no rule has path {rule_path!r}", key="path")
