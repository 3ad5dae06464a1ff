"""Load and validate ai-server.toml into frozen dataclasses.

This is the one place config is read. Every problem becomes a ConfigError naming the file, the
line and the key, so a typo never reaches a running child.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_server.base.errors import ConfigError
from ai_server.base.netaddr import canonical, is_dns_name, listen_problem
from ai_server.base.tomlfile import Table, line_of, parse_toml, read_text

ENGINE_KINDS = ("ollama", "llama-server", "none")
DEFAULT_COMMANDS = {"ollama": ("ollama", "serve"), "llama-server": ("llama-server",), "none": ()}
# The local engine, when a front keeps one, is a node of this name.
LOCAL_NODE = "local"
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
class AlertsConfig:
    webhook: str = ""                # "": alerts go to the log only
    format: str = "json"             # json | ntfy | slack
    restarts: int = 3                # a restart loop: this many restarts of one child ...
    restart_minutes: float = 10.0    # ... within this many minutes
    refusals_per_minute: int = 20    # a client refused this often in a minute is probing


ALERT_FORMATS = ("json", "ntfy", "slack")
_WEBHOOK = re.compile(r"https?://[^\s/?#@]+(:[0-9]{1,5})?(/[^\s]*)?")


def _webhook(value: str) -> str | None:
    if value == "" or (_WEBHOOK.fullmatch(value) and all(0x20 < ord(c) < 0x7F for c in value)):
        return None
    return "must be an http:// or https:// URL (printable ASCII, no spaces), or \"\" for the log only"


@dataclass(frozen=True)
class LogConfig:
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5




@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    warm: WarmConfig = field(default_factory=WarmConfig)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    nodes: tuple[NodeConfig, ...] = ()

    @property
    def fronting(self) -> bool:
        """This ai-server sends requests on to [[node]]s (and its own engine, if it has one)."""
        return bool(self.nodes)


def load(config_dir: Path) -> Config:
    text, label = read_text(config_dir / "ai-server.toml")
    return parse_config(text, label)


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
    tables = {"proxy", "engine", "warm", "restart", "log", "metrics", "alerts", "node"}
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

    def table(name: str) -> Table:
        return Table(data.get(name, {}), name, text, label)

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

    a = table("alerts")
    alerts = AlertsConfig(
        webhook=a.get("webhook", "", str, _webhook),
        format=a.get("format", "json", str, lambda v: None if v in ALERT_FORMATS else
                     "must be " + ", ".join(f'"{f}"' for f in ALERT_FORMATS)),
        restarts=a.get("restarts", 3, int, lambda v: None if v >= 1 else "must be at least 1"),
        restart_minutes=float(a.get("restart_minutes", 10.0, number, _positive)),
        refusals_per_minute=a.get("refusals_per_minute", 20, int, lambda v: None if v >= 1 else "must be at least 1"),
    )
    a.finish()

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
    return Config(proxy=proxy, engine=engine, warm=warm, restart=restart, log=log, metrics=metrics, alerts=alerts,
                  nodes=nodes)


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_NODE_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?")  # names: refused below


def _nodes(entries: list[dict[str, Any]], text: str, label: str) -> tuple[NodeConfig, ...]:
    nodes: list[NodeConfig] = []
    for index, entry in enumerate(entries):
        t = Table(entry, "node", text, label, index)
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
