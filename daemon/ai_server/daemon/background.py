"""The supervisor's background loops, each a plain function of what it watches and what it
calls. The supervisor wires them up (Supervisor._background) and cancels them at shutdown.

A loop that runs for the life of the daemon must survive a bug in one round: it logs the
exception and goes on (`every`, and `reload` callables that guard themselves).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from ai_server import desired as desired_mod
from ai_server.access import tailnet
from ai_server.base import logs
from ai_server.desired import Desired
from ai_server.haproxy import tls
from ai_server.observe.alerts import Alerts, Seen
from ai_server.observe.webhook import Deliverer

CONFIG_FILES = frozenset({"ai-server.toml", "allowlist.toml", "clients.toml"})
TAILNET_POLL_S = 5.0
# An editor that saves in place truncates the file and then writes it; one that keeps a backup
# may rename the file away first. A reload between the two would apply an empty file (every
# default: listen on "tailscale", no clients, no rules) for a moment. A file that had content
# and now has none is given this long to get it back; still empty or gone after that, it is
# refused like a broken file (Supervisor.reload): an emptied clients.toml lifted `[unknown]
# deny` (attacker's pass 8), and a disk that fills during a save must not open the proxy.
SETTLE_S = 2.0
SETTLE_POLL_S = 0.05
# A save written in pieces (a script, an editor flushing a large file) is valid TOML at every
# line break, and a reload between two pieces applied the first part alone: a clients.toml cut
# after one client drops the entries after it. So a file written less than this long ago is
# still being saved, and the reload waits for it to be still (at most SETTLE_S in all).
QUIET_S = 0.5

Reload = Callable[[str], Awaitable[None]]
# Applies a new tailnet view to the config in force, without reading the files again.
ApplyTailnet = Callable[[tailnet.Detection, str], Awaitable[object]]


async def watch_config(config_dir: Path, stop: asyncio.Event, reload: Reload,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """A reload for every save (editors save by renaming; watchfiles sees that too), once no
    file is caught half-saved (`reload` settles: Supervisor.reload, for every trigger)."""
    import watchfiles

    config_dir.mkdir(parents=True, exist_ok=True)
    async for changes in watchfiles.awatch(config_dir, debounce=100, step=50, stop_event=stop,
                                           watch_filter=lambda _, p: os.path.basename(p) in CONFIG_FILES):
        files = sorted({os.path.basename(p) for _, p in changes})
        await reload(f"saved {', '.join(files)}")


def config_sizes(config_dir: Path) -> dict[str, int]:
    """Each config file's size; 0 for one that is missing."""
    return sizes_of(config_stats(config_dir))


def sizes_of(stats: dict[str, tuple[int, float]]) -> dict[str, int]:
    return {name: size for name, (size, _) in stats.items()}


def config_stats(config_dir: Path) -> dict[str, tuple[int, float]]:
    """Each config file's size and when it was last written (wall clock); (0, 0.0) for one
    that is missing."""
    out = {}
    for name in CONFIG_FILES:
        try:
            st = (config_dir / name).stat()
            out[name] = (st.st_size, st.st_mtime)
        except OSError:
            out[name] = (0, 0.0)
    return out


def emptied(before: dict[str, int], now: dict[str, int]) -> list[str]:
    """The files that had content and now have none (empty or gone)."""
    return sorted(name for name, size in before.items() if size and not now.get(name))


def unsettled(before: dict[str, int], stats: dict[str, tuple[int, float]], wall: float) -> dict[str, str]:
    """The files a reload must not read yet, each with why: emptied or gone (a save that
    truncates first), or written less than QUIET_S ago (a save still going on; a time ahead
    of the clock too, which settle's deadline bounds). Pure."""
    out = {name: "emptied or gone" for name in emptied(before, sizes_of(stats))}
    for name, (size, written) in sorted(stats.items()):
        if size and name not in out and wall - written < QUIET_S:
            out[name] = "being written"
    return out


async def settle(config_dir: Path, before: dict[str, int], clock: Callable[[], float],
                 wall: Callable[[], float] = time.time) -> tuple[dict[str, int], list[str]]:
    """Wait (at most SETTLE_S) while a file that had content is empty or gone, or was
    written in the last QUIET_S: a save in progress. A file still being written after that is
    applied as it is; the files still empty or gone are returned, for the reload to refuse.
    The sizes to compare the next save with (a file still empty keeps the size it had: every
    reload refuses it until it has content again), and those files."""
    stats = config_stats(config_dir)
    waiting = unsettled(before, stats, wall())
    if not waiting:
        return sizes_of(stats), []
    log = logs.get()
    log.info("config_settling", files=sorted(waiting), seconds=SETTLE_S,
             reason="; ".join(f"{name} {why}" for name, why in sorted(waiting.items())) + ": waiting for the save to finish")
    deadline = clock() + SETTLE_S
    while waiting and clock() < deadline:
        await asyncio.sleep(SETTLE_POLL_S)
        stats = config_stats(config_dir)
        waiting = unsettled(before, stats, wall())
    gone = sorted(name for name, why in waiting.items() if why == "emptied or gone")
    if gone:
        log.warning("config_emptied", files=gone, reason=f"still empty or gone after {SETTLE_S:g}s: refused")
    if len(gone) < len(waiting):
        log.warning("config_unsettled", files=sorted(set(waiting) - set(gone)),
                    reason=f"still being written after {SETTLE_S:g}s: applied as it is now")
    return {**sizes_of(stats), **{name: before[name] for name in gone}}, gone


async def reload_on(wanted: asyncio.Event, reload: Reload, why: str) -> None:
    """A reload each time `wanted` is set (SIGHUP's handler only sets it)."""
    while True:
        await wanted.wait()
        wanted.clear()
        await reload(why)


def identity(view: tailnet.Detection) -> tailnet.Detection:
    """What of a tailnet view identity and binding use: a peer's HostName is what the device
    says about itself, shown to people only, and any device may change it at will. Pure."""
    return replace(view, peers=tuple(replace(p, host_name="") for p in view.peers))


async def follow_tailnet(current: Callable[[], Desired], apply: ApplyTailnet) -> None:
    """The new tailnet view applied when the tailnet addresses, names or peers change: the
    proxy binds a new address when it appears, and never falls back to anything else. The
    config files are not read here: a device on the tailnet can make its view change at will,
    and must not make a half-saved file apply."""
    log = logs.get()
    while True:
        await asyncio.sleep(TAILNET_POLL_S)
        try:
            old = current()
            # The tailnet's peers matter as soon as clients.toml names one.
            if "tailscale" not in old.config.proxy.listen and not old.clients.clients:
                continue
            # The last view goes in too: a CLI that fails keeps the peers it last gave.
            now = await asyncio.to_thread(desired_mod.with_tailnet, old, old)
            if identity(now.tailnet_view) != identity(old.tailnet_view):
                log.info("tailnet_changed", old=list(old.addresses), new=list(now.addresses), names=list(now.names),
                         problem=now.tailnet_problem, peers=len(now.peers), peers_known=now.peers_known,
                         stale_since=now.tailnet_view.stale_since, cli_problem=now.tailnet_view.cli_problem)
                await apply(now.tailnet_view, "tailnet changed")
        except Exception as err:  # one bad pass must not end following the tailnet for good
            log.exception("tailnet_failed", error=str(err))


async def every(seconds: float, work: Callable[[], Awaitable[None]], what: str) -> None:
    """`work` now and then every `seconds`; a bug in one round must not stop it for good."""
    log = logs.get()
    while True:
        try:
            await work()
        except Exception:
            log.exception(f"{what}_failed")
        await asyncio.sleep(seconds)


async def renew_certificate(ready: Callable[[], bool], wanted: Callable[[], bool], reload: Reload) -> None:
    """`tailscale cert` every 12 hours (it renews before expiry; a new one is swapped in), and
    every minute while the proxy waits for its first one."""
    while True:
        await asyncio.sleep(tls.RENEW_EVERY_S if ready() else tls.RETRY_S)
        if wanted():
            await reload("certificate renewal")


ALERTS_EVERY_S = 1.0


async def watch_alerts(alerts: Alerts, seen: Callable[[], Awaitable[Seen]], webhook: Deliverer) -> None:
    """Every second: the conditions over what the supervisor sees; each change logged and sent."""
    log = logs.get()
    while True:
        try:
            for change in alerts.observe(await seen()):
                alert = change.alert
                level = "info" if change.state == "resolved" else ("error" if alert.severity == "critical" else "warning")
                getattr(log, level)("alert", condition=alert.condition, state=change.state, message=change.message,
                                    subject=alert.subject, severity=alert.severity)
                webhook.send(change)
        except Exception:  # a bug here must not end alerting for good
            log.exception("alerts_failed")
        await asyncio.sleep(ALERTS_EVERY_S)
