"""What should run (Desired), and reload as supervisord's diff_to_active(): a pure plan of
what changed, then the actions it implies.

`read` gathers what should run (files, tailnet addresses); `plan(old, new)` says which
children and which parts of the proxy that touches; the supervisor applies the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ai_server import config as config_mod
from ai_server.access import allowlist, tailnet
from ai_server.access import clients as clients_mod
from ai_server.access.allowlist import Allowlist
from ai_server.access.clients import Clients
from ai_server.access.tailscale import Peer
from ai_server.base.errors import ConfigError
from ai_server.config import Config


@dataclass(frozen=True)
class Desired:
    """Everything the daemon should be running, as read from the files and the machine."""
    config: Config = field(default_factory=Config)
    allowlist: Allowlist = field(default_factory=Allowlist)
    addresses: tuple[str, ...] = ()
    names: tuple[str, ...] = ()          # this machine's MagicDNS names, for the Host check
    tailnet_problem: str | None = None   # why "tailscale" has no address, when it has none
    clients: Clients = field(default_factory=Clients)
    peers: tuple[Peer, ...] = ()         # the tailnet's other devices, for who is calling
    cert_domains: tuple[str, ...] = ()   # what `tailscale cert` can certify
    # What the last read of the tailnet found, kept while the CLI fails (tailnet.degraded).
    tailnet_view: tailnet.Detection = field(default_factory=lambda: tailnet.Detection(peers_known=True))

    @property
    def peers_known(self) -> bool:
        """Who is calling from the tailnet can be told: a peer map was read, or nothing here
        depends on one."""
        return self.tailnet_view.peers_known or not self.clients.uses_peers

    @property
    def tls_domain(self) -> str | None:
        """The name the proxy's certificate is for (proxy.tls = "tailscale")."""
        return next(iter(self.cert_domains or self.names[:1]), None)

    @property
    def engine_bind(self) -> tuple[str, int] | None:
        """Where the engine listens: loopback behind the proxy; without the proxy (declined at
        install), the first tailnet address itself, never every interface. None: no address yet."""
        cfg = self.config
        if cfg.proxy.enabled:
            return ("127.0.0.1", cfg.engine.port)
        if not self.addresses:
            return None
        ipv4 = [a for a in self.addresses if ":" not in a]
        return ((ipv4 or list(self.addresses))[0], cfg.proxy.port)


@dataclass(frozen=True)
class Plan:
    log: bool = False            # reconfigure log rotation
    policy: bool = False         # new restart policy or timeouts for the children
    rules: bool = False          # maps to swap into the running proxy (no reload): any of these
    allowlist: bool = False      #   allowlist.toml changed
    clients: bool = False        #   clients.toml or the tailnet's peers changed
    nodes: bool = False          # [[node]]s changed: read them again
    proxy: bool = False          # haproxy.cfg inputs changed: rewrite, then reload in place
    addresses: bool = False      # where the proxy listens changed (it may start or stop)
    engine: str | None = None    # why the engine restarts; None: it keeps running

    def changed(self) -> list[str]:
        names = [("log", self.log), ("engine", self.engine is not None), ("proxy", self.proxy),
                 ("allowlist", self.allowlist), ("clients", self.clients), ("nodes", self.nodes)]
        return [name for name, on in names if on]


def read(config_dir: Path, previous: Desired | None = None) -> Desired:
    """The files and the tailnet. Blocking (files, the tailscale CLI): call it off the event
    loop. `previous`: what was read before, whose tailnet view stays while the CLI fails.
    ConfigError on a bad file."""
    cfg = config_mod.read(config_dir)
    rules = allowlist.read(config_dir)
    return with_tailnet(Desired(cfg, rules, clients=clients_mod.read(config_dir)), previous)


def with_tailnet(desired: Desired, previous: Desired | None = None) -> Desired:
    """`desired` with the tailnet as it is now: addresses to listen on, names, peers. Blocking."""
    listen = desired.config.proxy.listen
    # Read even when the proxy listens on explicit addresses: clients.toml may name peers, and
    # HTTPS needs this machine's MagicDNS name.
    wanted = "tailscale" in listen or desired.clients.clients or desired.config.proxy.tls == "tailscale"
    found = tailnet.detect(previous.tailnet_view if previous else None) if wanted else tailnet.Detection(peers_known=True)
    return with_view(desired, found)


def with_view(desired: Desired, found: tailnet.Detection) -> Desired:
    """`desired` with a tailnet view already read: nothing from the files is read again. Pure."""
    listen = desired.config.proxy.listen
    return replace(desired, addresses=tailnet.resolve_listen(listen, found.addresses), names=found.names,
                   tailnet_problem=found.problem if "tailscale" in listen else None, peers=found.peers,
                   cert_domains=found.cert_domains, tailnet_view=found)


def _how_it_runs(cfg: Config) -> tuple[object, ...]:
    # Timeouts apply to the running engine as they are; only these need a new process.
    e = cfg.engine
    return (e.kind, e.command, e.port, e.env)


def plan(old: Desired, new: Desired, config_file: str = "ai-server.toml") -> Plan:
    """What applying `new` over `old` takes. ConfigError for a change that needs a restart of
    ai-server itself."""
    o, n = old.config, new.config
    if n.proxy.enabled != o.proxy.enabled:
        raise ConfigError(config_file, "changing proxy.enabled needs a restart of ai-server "
                          "(`ai-server install` again, or restart the service)", key="proxy.enabled")
    addresses = new.addresses != old.addresses
    names = new.names != old.names
    who = new.clients != old.clients or new.peers != old.peers or new.peers_known != old.peers_known
    if n.proxy.enabled:
        rules = new.allowlist != old.allowlist or names or who
        proxy = (n.proxy != o.proxy or addresses or n.engine.port != o.engine.port
                 or n.engine.kind != o.engine.kind or n.nodes != o.nodes or n.engine.slots != o.engine.slots)
        engine_moves = False
    else:
        # Without the proxy, the engine itself listens where proxy.listen and proxy.port say.
        rules = proxy = False
        engine_moves = addresses or n.proxy.port != o.proxy.port
    engine = None
    if _how_it_runs(n) != _how_it_runs(o):
        engine = "engine config changed"
    elif engine_moves:
        engine = "listen address changed"
    return Plan(allowlist=n.proxy.enabled and new.allowlist != old.allowlist, clients=n.proxy.enabled and who,
                nodes=n.nodes != o.nodes,
                log=n.log != o.log, policy=n.restart != o.restart or n.engine.start_timeout != o.engine.start_timeout,
                rules=rules, proxy=proxy, addresses=addresses, engine=engine)
