"""ai-server.toml, declared once: every key is one field of the frozen dataclasses below, with
its default, its check and its one-line doc. That declaration drives the parser, the test that
holds the shipped config/ai-server.toml to it (tests/unit/test_config_keys.py), and the key
tables in docs/configuration.md (`python -m ai_server.config docs/configuration.md` writes them).

This is the one place config is read. Every problem becomes a ConfigError naming the file, the
line and the key, so a typo never reaches a running child.

How to add a key:
1. A field in its table's dataclass: `name: type = key(default, "one line of doc", check=...)`.
   `default` is what the program uses when the file is silent; `check` returns None or what is
   wrong ("must be at least 1"). The TOML type follows the default (a float also takes an
   integer, a tuple is an array); `kinds=` says otherwise. `toml=` when the file's name is not
   the field's, `read=` / `write=` when the file's value is not the field's (MiB in the file,
   bytes in the field), `shown=` when the docs should say the default in words.
2. The key in config/ai-server.toml, in its table: a comment above it, then `name = default`
   (or `# name = default` when writing it out would pin what should follow another key, as
   engine.command follows kind).
3. `python -m ai_server.config docs/configuration.md` for the key tables.
tests/unit/test_config_keys.py fails until all three agree.
A new table: a frozen dataclass of keys and a field of Config, `name: T = table(T, "doc")`.
A rule between keys (one key limits another) goes in `_across`, naming the key to blame.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ai_server.base import tomlkeys
from ai_server.base.errors import ConfigError
from ai_server.base.netaddr import canonical, is_dns_name, listen_problem
from ai_server.base.tomlfile import Table, line_of, parse_toml, read_text
from ai_server.base.tomlkeys import key, table
from ai_server.base.zones import valid_zone

ENGINE_KINDS = ("ollama", "llama-server", "none")
DEFAULT_COMMANDS = {"ollama": ("ollama", "serve"), "llama-server": ("llama-server",), "none": ()}
# The local engine, when a front keeps one, is a node of this name.
LOCAL_NODE = "local"
# launchd kills a job this long after SIGTERM; shutdown must finish inside it.
LAUNCHD_EXIT_TIMEOUT = 20.0
MIB = 1024 * 1024


# -- checks: None, or what is wrong ----------------------------------------------------------------

def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number, 1 to 65535"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _at_least_zero(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _one_of(*choices: str) -> tomlkeys.Check:
    return lambda v: None if v in choices else "must be " + " or ".join(f'"{c}"' for c in choices)


def _string_list(value: list[Any]) -> str | None:
    if not all(isinstance(item, str) and item for item in value):
        return "must be an array of non-empty strings"
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _listen(value: list[Any]) -> str | None:
    if _string_list(value):
        return _string_list(value)
    if not value:
        return "must name at least one address (or \"tailscale\")"
    return next((p for a in value if a != "tailscale" and (p := listen_problem(a))), None)


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


def _metrics_listen(value: list[Any]) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return f"{item!r} is not an address"
        if item == "tailscale":
            continue
        host, _, port = item.rpartition(":")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            return f"{item!r} is not ADDRESS:PORT (or \"tailscale\")"
        problem = listen_problem(host.strip("[]"))
        if problem:
            return problem
    return None


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


def _env(value: dict[str, Any]) -> str | None:
    for name, item in value.items():
        if not isinstance(item, str):
            return f"{name} must be a string, got {item!r}"
        if name == "OLLAMA_HOST" and not is_loopback_host(item):
            return f"OLLAMA_HOST={item} would expose the engine; it always listens on 127.0.0.1:<engine.port>"
    return None


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_NODE_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?")  # names: refused below


def _node_name(value: str) -> str | None:
    if _NODE_NAME.fullmatch(value) and value != LOCAL_NODE:
        return None
    return f"must be 1-32 letters, digits, . _ - (and not {LOCAL_NODE!r}, this machine's own engine)"


def _node_url(value: str) -> str | None:
    found = _NODE_URL.fullmatch(value)
    if not found:
        return "must be http://ADDRESS:PORT, another ai-server's proxy at its tailnet address"
    host, port = found.group(1).strip("[]"), int(found.group(2))
    if not 1 <= port <= 65535:
        return "the port must be 1 to 65535"
    if not _is_ip(host):
        # HAProxy resolves a name once, when it starts (and hangs or refuses to start when DNS
        # does not answer); a tailnet address never changes for a machine.
        return f"{host!r} is not an IP address: use the node's tailnet address (`tailscale ip -4 {host.split('.')[0]}`)"
    return None


# -- the tables --------------------------------------------------------------------------------------

def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool = key(True, "HAProxy in front of the engine; false only when HAProxy was declined at install")
    listen: tuple[str, ...] = key(
        ("tailscale",), 'addresses HAProxy binds; "tailscale": this machine\'s tailnet addresses, followed. '
        "Never every interface", check=_listen, read=lambda v: _unique([a if a == "tailscale" else canonical(a) for a in v]))
    port: int = key(11434, "the port HAProxy listens on", check=_port)
    server_names: tuple[str, ...] = key(
        (), "Host names accepted besides the listen addresses, MagicDNS names and (on loopback) localhost; others get 421",
        check=_server_names, read=lambda v: _unique([n.lower().rstrip(".") for n in v]))
    tls: str = key("off", '"tailscale": HTTPS with this machine\'s `tailscale cert`, renewed live; "off": plain HTTP',
                   check=_one_of("off", "tailscale"))
    drain_timeout: float = key(10.0, "seconds in-flight responses may take to finish when the proxy stops or reloads",
                               check=_at_least_zero)
    max_body_bytes: int = key(32 * MIB, "largest request body, MiB (at most 200); larger gets 413", toml="max_body_mb",
                              kinds=(int, float), check=lambda v: None if 0 < v <= 200 else "must be more than 0 and at most 200",
                              read=lambda v: int(v * MIB), write=lambda b: b / MIB)
    # HAProxy holds a body whole while the model check reads it: this bounds them all together.
    body_memory_bytes: int = key(
        512 * MIB,
        "MiB bodies over 64 KiB may take in HAProxy at once, each counted twice (buffer, check's copy); past it 503, unread",
        toml="body_memory_mb", kinds=(int, float),
        check=lambda v: None if 0 < v <= 1 << 20 else "must be more than 0 (MiB)",
        read=lambda v: int(v * MIB), write=lambda b: b / MIB)
    request_timeout: float = key(10.0, "seconds a client has to send its whole request, body included (408 past it)",
                                 check=_positive)
    idle_timeout: float = key(900.0, "seconds a connection may stay silent, both ways", check=_positive)
    queue_timeout: float = key(120.0, "seconds a request may wait for an engine slot or a restarting engine (then 503)",
                               check=_positive)
    queue_max: int = key(64, "generation requests that may wait for a slot at once; one more gets 503", check=_at_least_one)
    # HAProxy's priority offsets stop at 524 s either way: the window is at most half of it.
    priority_window: float = key(60.0, "seconds a client's priority moves its requests in the queue, either way",
                                 check=lambda v: None if 0 <= v <= 262 else "must be 0 to 262 seconds")
    access_log: bool = key(True, "log every request as a `request` event")
    fronts: tuple[str, ...] = key((), "on a node: the tailnet addresses of the ai-servers that front it",
                                  check=_addresses, read=lambda v: tuple(canonical(a) for a in v))


@dataclass(frozen=True)
class EngineConfig:
    kind: str = key("ollama", '"ollama", "llama-server", or "none" (a front for [[node]]s only)',
                    check=lambda v: None if v in ENGINE_KINDS else
                    f"{v!r} is not an engine kind; use " + " or ".join(f'"{k}"' for k in ENGINE_KINDS))
    command: tuple[str, ...] = key(DEFAULT_COMMANDS["ollama"], "the argv; the first word is looked up on PATH and "
                                   "in Homebrew's folders", check=_string_list, shown="follows kind")
    port: int = key(11434, "the engine listens on 127.0.0.1:<port> and nowhere else", check=_port)
    env: tuple[tuple[str, str], ...] = key(
        (), "extra environment for the engine (OLLAMA_HOST is ai-server's)", kinds=(dict,), check=_env,
        read=lambda v: tuple(sorted((k, s) for k, s in v.items() if k != "OLLAMA_HOST")), write=dict)
    start_timeout: float = key(120.0, "seconds the engine has to answer its health check before the start failed",
                               check=_positive)
    parallel: int = key(0, "generation slots; 0: what the engine is told (OLLAMA_NUM_PARALLEL, --parallel), else 4",
                        check=lambda v: None if 0 <= v <= 1024 else "must be 0 (the engine's own) to 1024")
    drain_timeout: float = key(300.0, "seconds a restart waits for generations in flight (new requests wait in the proxy)",
                               check=_at_least_zero)

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
class WarmConfig:
    models: tuple[str, ...] = key((), "models loaded after every engine start, one at a time", check=_string_list)
    pull: bool = key(True, "pull a missing model before loading it (Ollama only)")
    keep_alive: str = key("24h", "how long Ollama keeps a warmed model in memory")


@dataclass(frozen=True)
class RestartPolicy:
    startsecs: float = key(1.0, "a child that exits sooner than this after starting has failed to start",
                           check=_at_least_zero)
    startretries: int = key(5, "failed starts in a row before FATAL (until `ai-server start` or a config change)",
                            check=_at_least_one)
    backoff_base: float = key(1.0, "retry N waits backoff_base * 2^(N-1) seconds ...", check=_positive)
    backoff_cap: float = key(60.0, "... at most this many", check=_positive)
    stable_secs: float = key(60.0, "a run this long resets the failure count", check=_at_least_zero)
    stop_timeout: float = key(5.0, "seconds from SIGTERM to SIGKILL; with proxy.drain_timeout under launchd's 20 s",
                              check=_positive)

    def backoff(self, failures: int) -> float:
        """Delay before the next try after `failures` failures in a row: doubling, capped."""
        if failures <= 0:
            return 0.0
        return float(min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1)))


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, ...] = key(("127.0.0.1:9464",), 'where /metrics is served: "ADDRESS:PORT", or "tailscale" '
                                  "(the tailnet addresses, port 9464). Never every interface", check=_metrics_listen)


ALERT_FORMATS = ("json", "ntfy", "slack")
_WEBHOOK = re.compile(r"https?://[^\s/?#@]+(:[0-9]{1,5})?(/[^\s]*)?")


def _webhook(value: str) -> str | None:
    if value == "" or (_WEBHOOK.fullmatch(value) and all(0x20 < ord(c) < 0x7F for c in value)):
        return None
    return "must be an http:// or https:// URL (printable ASCII, no spaces), or \"\" for the log only"


@dataclass(frozen=True)
class AlertsConfig:
    webhook: str = key("", 'where each alert is POSTed: an http(s) URL, or "" for the log only', check=_webhook)
    format: str = key("json", 'the webhook\'s body: "json", "ntfy" or "slack"', check=_one_of(*ALERT_FORMATS))
    restarts: int = key(3, "a restart loop: this many restarts of one child ...", check=_at_least_one)
    restart_minutes: float = key(10.0, "... within this many minutes", check=_positive)
    refusals_per_minute: int = key(20, "a client the proxy refused this often in a minute is probing", check=_at_least_one)


@dataclass(frozen=True)
class LogConfig:
    max_bytes: int = key(10 * MIB, "ai-server.jsonl is rotated at this size, MiB", toml="max_mb", kinds=(int, float),
                         check=_positive, read=lambda v: int(v * MIB), write=lambda b: b / MIB)
    backups: int = key(5, "rotated files kept", check=_at_least_zero)


@dataclass(frozen=True)
class NodeConfig:
    name: str = key(doc="shown in `ai-server nodes`, logs and metrics", kinds=(str,), check=_node_name)
    url: str = key(doc="the node's proxy at its tailnet address: http://ADDRESS:PORT", kinds=(str,), check=_node_url,
                   read=lambda v: v.rstrip("/"))

    @property
    def host(self) -> str:
        """The IP, as ipaddress writes it: haproxy.cfg gets the parsed address, not the text typed."""
        found = _NODE_URL.fullmatch(self.url)
        return str(ipaddress.ip_address(found.group(1).strip("[]"))) if found else ""

    @property
    def port(self) -> int:
        found = _NODE_URL.fullmatch(self.url)
        return int(found.group(2)) if found else 0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _keep_days(value: int) -> str | None:
    return None if 1 <= value <= 36500 else "must be 1 to 36500 days"


@dataclass(frozen=True)
class UsageConfig:
    keep_days: int = key(400, "the usage ledger keeps this many days of history", check=_keep_days)
    timezone: str = key("local", 'where "per day" and "per month" quotas reset: "local" or an IANA name',
                        check=valid_zone)


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = table(ProxyConfig, "HAProxy: where it listens, what it accepts, its queue")
    engine: EngineConfig = table(EngineConfig, "the engine it runs on loopback")
    warm: WarmConfig = table(WarmConfig, "models loaded ahead of the first request")
    restart: RestartPolicy = table(RestartPolicy, "restart policy for both children, after supervisord's")
    metrics: MetricsConfig = table(MetricsConfig, "Prometheus /metrics and the dashboard")
    alerts: AlertsConfig = table(AlertsConfig, "alerts: the log always, a webhook when set")
    usage: UsageConfig = table(UsageConfig, "the usage ledger and the quota windows")
    nodes: tuple[NodeConfig, ...] = table(NodeConfig, "other ai-servers this one fronts", toml="node", array=True)
    log: LogConfig = table(LogConfig, "log rotation")

    @property
    def fronting(self) -> bool:
        """This ai-server sends requests on to [[node]]s (and its own engine, if it has one)."""
        return bool(self.nodes)


# -- reading -----------------------------------------------------------------------------------------

def read(config_dir: Path) -> Config:
    text, label = read_text(config_dir / "ai-server.toml")
    return parse_config(text, label)


def parse_config(text: str, label: str = "ai-server.toml") -> Config:
    data = parse_toml(text, label)
    declared = {t.name: t for t in tomlkeys.tables(Config)}
    for name, value in data.items():
        where = line_of(text, name) or line_of(text, None, name)
        if name not in declared:
            raise ConfigError(label, "unknown table" if isinstance(value, dict) else "unknown key", line=where, key=name)
        if declared[name].array and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise ConfigError(label, f"must be [[{name}]] tables", line=where, key=name)
        if not declared[name].array and not isinstance(value, dict):
            raise ConfigError(label, "must be a table", line=line_of(text, None, name), key=name)
    found: dict[str, Any] = {}
    tables: dict[str, Table] = {}
    for t in declared.values():
        if t.array:
            entries = [Table(entry, t.name, text, label, i) for i, entry in enumerate(data.get(t.name, []))]
            found[t.field] = tuple(tomlkeys.read(t.cls, entry) for entry in entries)
            tables.update({f"{t.name}[{i}]": entry for i, entry in enumerate(entries)})
        else:
            tables[t.name] = Table(data.get(t.name, {}), t.name, text, label)
            found[t.field] = tomlkeys.read(t.cls, tables[t.name])
    return _across(Config(**found), tables)


def _across(cfg: Config, tables: dict[str, Table]) -> Config:
    """The rules that tie one key to another; each blames the key a user would change."""
    engine, proxy = tables["engine"], cfg.proxy
    command = cfg.engine.command if "command" in engine.data else DEFAULT_COMMANDS[cfg.engine.kind]
    cfg = replace(cfg, engine=replace(cfg.engine, command=command))
    kind = cfg.engine.kind
    if proxy.body_memory_bytes < proxy.max_body_bytes:
        raise tables["proxy"].fail("body_memory_mb", "must be at least proxy.max_body_mb: one body of the largest size must fit")
    if not command and kind != "none":
        raise engine.fail("command", "must not be empty")
    if kind == "llama-server" and any(arg == "--host" or arg.startswith("--host=") for arg in command):
        raise engine.fail("command", "sets --host; ai-server passes --host 127.0.0.1 itself")
    own = engine_parallel(cfg.engine)
    if cfg.engine.parallel and own and own != cfg.engine.parallel:
        setting = "OLLAMA_NUM_PARALLEL" if kind == "ollama" else "--parallel"
        raise engine.fail("parallel", f"is {cfg.engine.parallel} but the engine's {setting} is {own}: "
                          "set one of them, or both alike")
    if proxy.drain_timeout + cfg.restart.stop_timeout >= LAUNCHD_EXIT_TIMEOUT - 1:
        raise tables["restart"].fail("stop_timeout", f"proxy.drain_timeout + restart.stop_timeout must stay under "
                                     f"{LAUNCHD_EXIT_TIMEOUT - 1:.0f} s, or launchd (ExitTimeOut 20 s) kills the "
                                     "supervisor mid-shutdown")
    for i, node in enumerate(cfg.nodes):
        if any(n.name == node.name for n in cfg.nodes[:i]):
            raise tables[f"node[{i}]"].fail("name", f"{node.name!r} is already a node")
    if kind == "none" and not cfg.nodes:
        raise engine.fail("kind", '"none" is for a machine that only fronts others: add [[node]] tables, or name an engine')
    if kind == "none" and not proxy.enabled:
        raise engine.fail("kind", '"none" needs the proxy (proxy.enabled = true)')
    return cfg


# -- the key tables in the docs ------------------------------------------------------------------------

BEGIN = "<!-- ai-server.toml keys: written by `python -m ai_server.config FILE` from config.py; do not edit -->"
END = "<!-- end of ai-server.toml keys -->"


def with_key_tables(document: str) -> str:
    """`document` (docs/configuration.md) with its key tables written from the declarations."""
    return tomlkeys.with_markdown(document, Config, BEGIN, END)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(with_key_tables(target.read_text(encoding="utf-8")), encoding="utf-8")
