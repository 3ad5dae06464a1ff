"""Load and validate ai-server.toml and allowlist.toml into frozen dataclasses.

This is the one place config is read. Every problem becomes a ConfigError naming the file, the
line and the key, so a typo never reaches a running child.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ai_server.errors import ConfigError
from ai_server.netaddr import canonical, listen_problem
from ai_server.tailscale import is_dns_name
from ai_server.tomlpos import line_of

ENGINE_KINDS = ("ollama", "llama-server", "none")
DEFAULT_COMMANDS = {"ollama": ("ollama", "serve"), "llama-server": ("llama-server",), "none": ()}
# The local engine, when a front keeps one, is a node of this name.
LOCAL_NODE = "local"
# Methods a rule may list. CONNECT and TRACE are never forwarded: they only help attackers.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MODEL_PLACEHOLDER = "{model}"
# launchd kills a job this long after SIGTERM; shutdown must finish inside it.
LAUNCHD_EXIT_TIMEOUT = 20.0


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool = True
    listen: tuple[str, ...] = ("tailscale",)
    server_names: tuple[str, ...] = ()
    tls: str = "off"
    fronts: tuple[str, ...] = ()      # addresses of the ai-servers that front this one (nodes)
    port: int = 11434
    drain_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 10.0
    idle_timeout: float = 900.0
    queue_timeout: float = 120.0
    queue_max: int = 64
    priority_window: float = 60.0
    access_log: bool = True


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "ollama"
    command: tuple[str, ...] = DEFAULT_COMMANDS["ollama"]
    port: int = 11434
    env: tuple[tuple[str, str], ...] = ()
    start_timeout: float = 120.0
    drain_timeout: float = 300.0
    parallel: int = 0

    @property
    def slots(self) -> int:
        """Generation slots: engine.parallel, else what the engine is told (OLLAMA_NUM_PARALLEL,
        --parallel), else 4, both engines' automatic default on a machine with the memory."""
        return self.parallel or engine_parallel(self) or 4


def engine_parallel(engine: EngineConfig) -> int | None:
    """The parallelism the engine's own settings give it, if any."""
    if engine.kind == "ollama":
        value = dict(engine.env).get("OLLAMA_NUM_PARALLEL")
    else:
        value = dict(engine.env).get("LLAMA_ARG_N_PARALLEL")
        argv = list(engine.command)
        for i, arg in enumerate(argv):
            if arg in ("--parallel", "-np") and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith("--parallel="):
                value = arg.split("=", 1)[1]
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number and number > 0 else None


@dataclass(frozen=True)
class NodeConfig:
    name: str
    url: str
    host: str        # the IP address or DNS name in url
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, ...] = ("127.0.0.1:9464",)


@dataclass(frozen=True)
class WarmConfig:
    models: tuple[str, ...] = ()
    pull: bool = True
    keep_alive: str = "24h"


@dataclass(frozen=True)
class RestartPolicy:
    startsecs: float = 1.0
    startretries: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    stable_secs: float = 60.0
    stop_timeout: float = 5.0

    def backoff(self, failures: int) -> float:
        """Delay before the next try after `failures` failures in a row: doubling, capped."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))


@dataclass(frozen=True)
class LogConfig:
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5


@dataclass(frozen=True)
class Rule:
    path: str
    methods: tuple[str, ...]
    line: int | None = None


@dataclass(frozen=True)
class Allowlist:
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    warm: WarmConfig = field(default_factory=WarmConfig)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    nodes: tuple[NodeConfig, ...] = ()

    @property
    def fronting(self) -> bool:
        """This ai-server sends requests on to [[node]]s (and its own engine, if it has one)."""
        return bool(self.nodes)


# ---------------------------------------------------------------------------------------------
# Reading files


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


def load(config_dir: Path) -> Config:
    text, label = read_text(config_dir / "ai-server.toml")
    return parse_config(text, label)


def load_allowlist(config_dir: Path) -> Allowlist:
    text, label = read_text(config_dir / "allowlist.toml")
    return parse_allowlist(text, label)


# ---------------------------------------------------------------------------------------------
# Validation: ai-server.toml


class _Table:
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


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number, 1 to 65535"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _at_least_zero(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _string_list(value: list[Any]) -> str | None:
    if not all(isinstance(item, str) and item for item in value):
        return "must be an array of non-empty strings"
    return None


def _server_names(value: list[Any]) -> str | None:
    for name in value:
        if not isinstance(name, str) or not (is_dns_name(name) or _is_ip(name)):
            return f"{name!r} is not a host name or an IP address"
    return None


def _addresses(value: list[Any]) -> str | None:
    for item in value:
        if not isinstance(item, str) or not _is_ip(item):
            return f"{item!r} is not an IP address (a front's tailnet address)"
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_loopback_host(value: str) -> bool:
    """True when an OLLAMA_HOST-style value names only a loopback address."""
    host = re.sub(r"^[a-z]+://", "", value.strip()).rstrip("/")
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("", "localhost"):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_config(text: str, label: str = "ai-server.toml") -> Config:
    data = parse_toml(text, label)
    tables = {"proxy", "engine", "warm", "restart", "log", "metrics", "node"}
    for name, value in data.items():
        if name not in tables:
            raise ConfigError(label, "unknown table" if isinstance(value, dict) else "unknown key",
                              line=line_of(text, name) or line_of(text, None, name), key=name)
        if name == "node":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(label, "must be [[node]] tables", line=line_of(text, "node") or line_of(text, None, name),
                                  key=name)
        elif not isinstance(value, dict):
            raise ConfigError(label, "must be a table", line=line_of(text, None, name), key=name)

    def table(name: str) -> _Table:
        return _Table(data.get(name, {}), name, text, label)

    number = (int, float)
    p = table("proxy")
    listen = p.get("listen", ["tailscale"], list, _string_list)
    if not listen:
        raise p.fail("listen", "must name at least one address (or \"tailscale\")")
    for address in listen:
        problem = None if address == "tailscale" else listen_problem(address)
        if problem:
            raise p.fail("listen", problem)
    proxy = ProxyConfig(
        enabled=p.get("enabled", True, bool),
        listen=tuple(dict.fromkeys(a if a == "tailscale" else canonical(a) for a in listen)),
        server_names=tuple(dict.fromkeys(n.lower().rstrip(".") for n in p.get("server_names", [], list, _server_names))),
        tls=p.get("tls", "off", str, lambda v: None if v in ("off", "tailscale") else 'must be "off" or "tailscale"'),
        fronts=tuple(canonical(a) for a in p.get("fronts", [], list, _addresses)),
        port=p.get("port", 11434, int, _port),
        drain_timeout=float(p.get("drain_timeout", 10.0, number, _at_least_zero)),
        max_body_bytes=int(p.get("max_body_mb", 64, number,
                                 lambda v: None if 0 < v <= 200 else "must be more than 0 and at most 200") * 1024 * 1024),
        request_timeout=float(p.get("request_timeout", 10.0, number, _positive)),
        idle_timeout=float(p.get("idle_timeout", 900.0, number, _positive)),
        queue_timeout=float(p.get("queue_timeout", 120.0, number, _positive)),
        queue_max=p.get("queue_max", 64, int, lambda v: None if v >= 1 else "must be at least 1"),
        # HAProxy's priority offsets stop at 524 s either way: the window is at most half of it.
        priority_window=float(p.get("priority_window", 60.0, number,
                                    lambda v: None if 0 <= v <= 262 else "must be 0 to 262 seconds")),
        access_log=p.get("access_log", True, bool),
    )
    p.finish()

    e = table("engine")
    kind = e.get("kind", "ollama", str, lambda v: None if v in ENGINE_KINDS else
                 f"{v!r} is not an engine kind; use " + " or ".join(f'"{k}"' for k in ENGINE_KINDS))
    command = e.get("command", list(DEFAULT_COMMANDS[kind]), list, _string_list)
    if not command and kind != "none":
        raise e.fail("command", "must not be empty")
    if kind == "llama-server" and any(arg == "--host" or arg.startswith("--host=") for arg in command):
        raise e.fail("command", "sets --host; ai-server passes --host 127.0.0.1 itself")
    env = e.get("env", {}, dict)
    for key, value in env.items():
        if not isinstance(value, str):
            raise e.fail("env", f"{key} must be a string, got {value!r}")
        if key == "OLLAMA_HOST" and not is_loopback_host(value):
            raise e.fail("env", f"OLLAMA_HOST={value} would expose the engine; it always listens on 127.0.0.1:<engine.port>")
    engine = EngineConfig(
        kind=kind,
        command=tuple(command),
        port=e.get("port", 11434, int, _port),
        env=tuple(sorted((k, v) for k, v in env.items() if k != "OLLAMA_HOST")),
        start_timeout=float(e.get("start_timeout", 120.0, number, _positive)),
        drain_timeout=float(e.get("drain_timeout", 300.0, number, _at_least_zero)),
        parallel=e.get("parallel", 0, int, lambda v: None if 0 <= v <= 1024 else "must be 0 (the engine's own) to 1024"),
    )
    own = engine_parallel(engine)
    if engine.parallel and own and own != engine.parallel:
        setting = "OLLAMA_NUM_PARALLEL" if kind == "ollama" else "--parallel"
        raise e.fail("parallel", f"is {engine.parallel} but the engine's {setting} is {own}: "
                     "set one of them, or both alike")
    e.finish()

    w = table("warm")
    warm = WarmConfig(
        models=tuple(w.get("models", [], list, _string_list)),
        pull=w.get("pull", True, bool),
        keep_alive=w.get("keep_alive", "24h", str),
    )
    w.finish()

    r = table("restart")
    restart = RestartPolicy(
        startsecs=float(r.get("startsecs", 1.0, number, _at_least_zero)),
        startretries=r.get("startretries", 5, int, lambda v: None if v >= 1 else "must be at least 1"),
        backoff_base=float(r.get("backoff_base", 1.0, number, _positive)),
        backoff_cap=float(r.get("backoff_cap", 60.0, number, _positive)),
        stable_secs=float(r.get("stable_secs", 60.0, number, _at_least_zero)),
        stop_timeout=float(r.get("stop_timeout", 5.0, number, _positive)),
    )
    r.finish()
    if proxy.drain_timeout + restart.stop_timeout >= LAUNCHD_EXIT_TIMEOUT - 1:
        raise r.fail("stop_timeout", f"proxy.drain_timeout + restart.stop_timeout must stay under "
                     f"{LAUNCHD_EXIT_TIMEOUT - 1:.0f} s, or launchd (ExitTimeOut 20 s) kills the supervisor mid-shutdown")

    m = table("metrics")

    def metrics_listen(value: list[Any]) -> str | None:
        for item in value:
            if not isinstance(item, str):
                return f"{item!r} is not an address"
            if item == "tailscale":
                continue
            host, _, port = item.rpartition(":")
            host = host.strip("[]")
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                return f"{item!r} is not ADDRESS:PORT (or \"tailscale\")"
            problem = listen_problem(host)
            if problem:
                return problem
        return None

    metrics = MetricsConfig(listen=tuple(m.get("listen", ["127.0.0.1:9464"], list, metrics_listen)))
    m.finish()

    g = table("log")
    log = LogConfig(
        max_bytes=int(g.get("max_mb", 10, number, _positive) * 1024 * 1024),
        backups=g.get("backups", 5, int, _at_least_zero),
    )
    g.finish()
    nodes = _nodes(data.get("node", []), text, label)
    if kind == "none" and not nodes:
        raise e.fail("kind", '"none" is for a machine that only fronts others: add [[node]] tables, or name an engine')
    if kind == "none" and not proxy.enabled:
        raise e.fail("kind", '"none" needs the proxy (proxy.enabled = true)')
    return Config(proxy=proxy, engine=engine, warm=warm, restart=restart, log=log, metrics=metrics, nodes=nodes)


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_NODE_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?")  # names: refused below


def _nodes(entries: list[dict[str, Any]], text: str, label: str) -> tuple[NodeConfig, ...]:
    nodes: list[NodeConfig] = []
    for index, entry in enumerate(entries):
        t = _Table(entry, "node", text, label, index)
        name = t.get("name", None, str, lambda v: None if _NODE_NAME.fullmatch(v) and v != LOCAL_NODE else
                     f"must be 1-32 letters, digits, . _ - (and not {LOCAL_NODE!r}, this machine's own engine)")
        url = t.get("url", None, str, lambda v: None if _NODE_URL.fullmatch(v) else
                    "must be http://ADDRESS:PORT, another ai-server's proxy at its tailnet address")
        t.finish()
        if name is None or url is None:
            raise t.fail("name" if name is None else "url", "missing: a node has a name and a url")
        if any(n.name == name for n in nodes):
            raise t.fail("name", f"{name!r} is already a node")
        found = _NODE_URL.fullmatch(url)
        assert found is not None
        host, port = found.group(1).strip("[]"), int(found.group(2))
        if not 1 <= port <= 65535:
            raise t.fail("url", "the port must be 1 to 65535")
        if not _is_ip(host):
            # HAProxy resolves a name once, when it starts (and hangs or refuses to start when
            # DNS does not answer); a tailnet address never changes for a machine.
            raise t.fail("url", f"{host!r} is not an IP address: use the node's tailnet address (`tailscale ip -4 {host.split('.')[0]}`)")
        nodes.append(NodeConfig(name, url.rstrip("/"), host, port))
    return tuple(nodes)


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
    from ai_server.allowlist import path_regex  # the compiled rule: what it really matches

    reached = [p for p in MANAGEMENT_PROBES if re.fullmatch(path_regex(path)[1:-1], p)]
    if reached:
        return (f"would reach {reached[0].rstrip('0') + ('...' if reached[0].endswith('0') else '')}: model management "
                "is never forwarded (pull with `ai-server warm MODEL`)")
    return None


def parse_allowlist(text: str, label: str = "allowlist.toml") -> Allowlist:
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

        def fail(key: str, message: str) -> ConfigError:
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
