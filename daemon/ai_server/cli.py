"""The `ai-server` command: argparse, one small function per command, one-line errors.

Only AiServerError is caught: it is the user's problem, said in one line, exit 1. Anything else
is our bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ai_server import __version__
from ai_server import config as config_mod
from ai_server.access import allowlist, presets
from ai_server.base import logs
from ai_server.base.errors import AiServerError, NotRunning
from ai_server.base.paths import Paths, resolve
from ai_server.daemon import control

if TYPE_CHECKING:  # imported where it is used, as each command imports its own modules
    from ai_server.install.installer import Installer

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING_CHILD, EXIT_NO_SUPERVISOR = 0, 1, 2, 3, 4
# `status`: everything runs, but a config file is broken and the last good config is in force.
# A monitoring script's warning, not its alarm (3): nothing is down, yet the edit did not apply.
EXIT_CONFIG_ERROR = 5


def cmd_run(paths: Paths, args: argparse.Namespace) -> int:
    from ai_server.daemon import supervisor

    return asyncio.run(supervisor.run(paths))


def name_width(names: Sequence[str]) -> int:
    """supervisorctl's name column: the longest name, at least 30, plus 3."""
    return max([30, *(len(n) for n in names)]) + 3


def format_status(data: dict[str, Any], names: Sequence[str] = ()) -> str:
    shown = [c for c in data["children"] if not names or c["name"] in names]
    width = name_width([c["name"] for c in data["children"]])
    # supervisorctl's own layout: '%(namespec)-<width>s%(state)-10s%(desc)s'
    lines = [f"{c['name']:<{width}}{c['state']:<10}{c['description']}".rstrip() for c in shown]
    for name in names:
        if name not in {c["name"] for c in data["children"]}:
            lines.append(f"{name}: ERROR (no such process)")
    proxy = data["proxy"]
    if not names:
        if proxy.get("enabled") is False:
            lines.append(f"proxy: DISABLED: the engine listens on {proxy.get('engine_listen') or 'nothing yet'} itself; "
                         "every endpoint is reachable there")
        elif proxy.get("waiting"):
            lines.append(f"proxy: {proxy['waiting']}")
        else:
            lines.append(f"proxy: listening on {', '.join(proxy['listen'])}")
        if proxy.get("enabled") is not False:
            if proxy.get("engine_listen"):
                lines.append(f"engine: listening on {proxy['engine_listen']} (loopback only: reached through the proxy)")
            lines.append(f"allowlist: {proxy['rules']} rules, loaded {proxy['loaded_at']}")
        if proxy.get("nodes"):
            lines.append(f"nodes: {', '.join(proxy['nodes'])} (`ai-server nodes`: their state and models)")
        tailnet = proxy.get("tailnet") or {}
        if tailnet.get("stale_since"):
            lines.append(f"tailnet: `tailscale status` failing since {tailnet['stale_since']}; who is calling is "
                         f"as it said before then ({printable(str(tailnet.get('problem')))})")
        elif tailnet.get("known") is False:
            lines.append("tailnet: who is calling is not known yet: tailnet callers without a token get 503 "
                         f"({printable(str(tailnet.get('problem')))})")
        load = data.get("load")
        if load:
            queued = ", ".join(f"{c} {n}" for c, n in load["queued"].items())
            wait = f"; oldest wait {load['oldest_wait_s']:g}s" if load["oldest_wait_s"] else ""
            lines.append(f"engine: {load['inflight']} of {load['slots']} slots in use; queued: {queued}{wait}")
            if load["clients"]:
                lines.append("clients: " + ", ".join(f"{c} {n}" for c, n in sorted(load["clients"].items())))
        if proxy.get("config_error"):
            lines.append(f"config error: {proxy['config_error']} (the last good config stays in force)")
        lines += usage_status(data.get("usage"))
        for item in data.get("warm") or []:
            took = f" in {item['seconds']:g}s" if item.get("seconds") is not None else ""
            detail = f": {item['detail']}" if item["state"] == "failed" else ""
            lines.append(f"warm: {item['model']} {item['state']}{took}{detail}")
    return "\n".join(lines)


def usage_status(usage: dict[str, Any] | None) -> list[str]:
    """status's lines about usage: the ledger when it is in trouble, each client against quota."""
    if not usage:
        return []
    lines = []
    ledger = usage["ledger"]
    if not ledger["ok"]:
        name = str(ledger["file"]).rsplit("/", 1)[-1]
        lines.append(f"usage: LEDGER NOT WRITTEN ({name}): {ledger['problem']}; {ledger['unrecorded']} requests unrecorded")
    elif ledger["unrecorded"]:
        lines.append(f"usage: {ledger['unrecorded']} requests were not recorded in the ledger")
    for item in usage["quotas"]:
        state = f"OVER until {item['resets_at']}" if item["over"] else f"resets {item['resets_at']}"
        used = f"{item['used']:g}" if isinstance(item["used"], float) else item["used"]
        lines.append(f"quota: {item['client']} {item['quota']} {used} of {item['limit']} "
                     f"({100 * item['ratio']:.0f}%), {state}")
    return lines


def _status_code(data: dict[str, Any], names: Sequence[str]) -> int:
    children = [c for c in data["children"] if not names or c["name"] in names]
    wanted = {c["name"] for c in children}
    if any(n not in wanted for n in names):
        return EXIT_NOT_RUNNING_CHILD
    healthy = children and all(c["state"] == "RUNNING" for c in children)
    if not names and data["proxy"].get("waiting"):
        healthy = False
    if not healthy:
        return EXIT_NOT_RUNNING_CHILD
    return EXIT_CONFIG_ERROR if not names and data["proxy"].get("config_error") else EXIT_OK


def cmd_status(paths: Paths, args: argparse.Namespace) -> int:
    try:
        data = control.request(paths.control_socket, "status")
    except NotRunning as err:
        hint = _demo_hint(paths)
        if args.json:
            print(json.dumps({"running": False, "error": str(err), **({"hint": hint} if hint else {})}))
        else:
            print(str(err) + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_NO_SUPERVISOR
    if args.json:
        children = [c for c in data["children"] if not args.names or c["name"] in args.names]
        unknown = [n for n in args.names if n not in {c["name"] for c in data["children"]}]
        out = {k: v for k, v in data.items() if k != "ok"}
        out["children"] = children
        if unknown:
            out["unknown"] = unknown
        print(json.dumps(out, indent=2))
    else:
        print(format_status(data, args.names))
    return _status_code(data, args.names)


def _control(command: str) -> Callable[[Paths, argparse.Namespace], int]:
    def run(paths: Paths, args: argparse.Namespace) -> int:
        # A restart drains the engine first (engine.drain_timeout, 300 s by default).
        answer = control.request(paths.control_socket, command, {"name": args.name}, timeout=900.0)
        shown = [c for c in answer["children"] if args.name == "all" or c["name"] == args.name]
        print(format_status({"children": shown, "proxy": answer["proxy"]}, [c["name"] for c in shown]))
        return EXIT_OK
    return run


def cmd_reload(paths: Paths, args: argparse.Namespace) -> int:
    answer = control.request(paths.control_socket, "reload", timeout=60.0)
    changed = answer.get("changed") or []
    print("reloaded: " + (", ".join(changed) + " changed" if changed else "nothing changed"))
    return EXIT_OK


def _progress_line(event: dict[str, Any]) -> str:
    model, status = event.get("model", ""), event.get("status", "")
    total, completed = event.get("total"), event.get("completed")
    if total and completed is not None:
        return f"{model}: {status} {100 * completed / total:3.0f}% ({completed >> 20} of {total >> 20} MiB)"
    return f"{model}: {status}"


def cmd_warm(paths: Paths, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    failed = False
    for message in control.stream(paths.control_socket, "warm", {"models": args.models, "pull": not args.no_pull},
                                  timeout=None):
        event = message.get("progress")
        if event is not None:
            done = event.get("state") in ("loaded", "failed") and event.get("status") == event.get("state")
            if done:
                took = f" in {event['seconds']:g}s" if event.get("seconds") is not None else ""
                line = f"{event['model']}: {event['state']}{took}"
                print(("\r\033[K" if tty else "") + line, flush=True)
            elif tty:
                print("\r\033[K" + _progress_line(event), end="", flush=True)
            continue
        for result in message.get("results", []):
            if result["state"] != "loaded":
                failed = True
                print(f"ai-server: {result['model']}: {result['detail']}", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK


def cmd_tail(paths: Paths, args: argparse.Namespace) -> int:
    pretty = sys.stdout.isatty()

    def emit(line: str) -> None:
        print(logs.render(line) if pretty else line, flush=True)

    for line in logs.last_lines(paths.log_file, args.lines, args.name, args.client):
        emit(line)
    if args.follow:
        try:
            for line in logs.follow(paths.log_file, args.name, args.client):
                emit(line)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_allow(paths: Paths, args: argparse.Namespace) -> int:
    target = paths.allowlist_file
    if args.allow_command == "list":
        rules = allowlist.read(paths.config_dir).rules
        width = max((len(r.path) for r in rules), default=4)
        for rule in rules:
            print(f"{rule.path:<{width}}  {', '.join(rule.methods)}")
        if not rules:
            print("(no rules: every request is refused)")
        return EXIT_OK
    if args.allow_command == "add":
        print(allowlist.add_rule(target, args.path, args.method))
    elif args.allow_command == "preset":
        return _allow_preset(target, args)
    else:
        print(allowlist.remove_rule(target, args.path))
    return EXIT_OK


def _allow_preset(target: Path, args: argparse.Namespace) -> int:
    if args.list:
        print(presets.listing())
        return EXIT_OK
    if not args.name:
        raise AiServerError(f"name a preset ({', '.join(presets.PRESETS)}), or --list")
    for line in presets.apply(target, args.name):
        print(line)
    return EXIT_OK


def cmd_clients(paths: Paths, args: argparse.Namespace) -> int:
    from ai_server.access import clients

    if args.clients_command == "token":
        token = clients.mint(paths.config_dir / "clients.toml", args.name)
        print(token)
        print(f"client {args.name!r}: this token is shown once; clients.toml keeps only its SHA-256. Send it as "
              "`Authorization: Bearer <token>` or `x-api-key: <token>`.", file=sys.stderr)
        return EXIT_OK
    answer = control.request(paths.control_socket, "clients")
    rows = answer["clients"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = name_width([r["name"] for r in rows])
    for row in rows:
        ident, policy = row["identity"], row["policy"]
        who = f"{ident['kind']}={ident['value']}" if ident["kind"] != "unknown" else f"[unknown] {ident['value']}"
        limits = ", ".join(f"{k} {policy[k]}" for k in ("rpm", "concurrency") if policy[k]) or "no limits"
        paths_text = "all paths" if policy["paths"] is None else f"{len(policy['paths'])} paths"
        print(f"{row['name']:<{width}}{row['in_flight']} in flight, {row['last_minute']} in the last minute; "
              f"{printable(who)}; {paths_text}; models {' '.join(policy['models'])}; {limits}; {policy['priority']}")
        print(f"{'':<{width}}  today: {usage_line(row)}")
        for peer in row["peers"]:
            print(f"{'':<{width}}  {printable(peer['device'])} {' '.join(peer['addresses'])}")
    return EXIT_OK


def printable(text: str) -> str:
    """Text a device chose (its HostName, say) for a terminal: control bytes as \\xNN, so a
    name cannot move the cursor, recolour or retitle the terminal it is shown in."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def usage_line(row: dict[str, Any]) -> str:
    """A client's use today against its quotas: `1200 tokens of 200000 (0.6%), 41.2 GPU-s`."""
    today, quotas = row.get("today") or {}, row.get("quotas") or {}
    parts = []
    for quota, used, unit in (("tokens_per_day", today.get("tokens", 0), "tokens"),
                              ("tokens_per_month", today.get("tokens_month", 0), "tokens this month"),
                              ("gpu_seconds_per_day", today.get("gpu_seconds", 0.0), "GPU-s")):
        if quota == "tokens_per_month" and quota not in quotas:
            continue
        shown = f"{used:g}" if isinstance(used, float) else str(used)
        standing = quotas.get(quota)
        if standing:
            over = " OVER, until " + standing["resets_at"] if standing["over"] else ""
            parts.append(f"{shown} {unit} of {standing['limit']} ({100 * standing['ratio']:.0f}%){over}")
        else:
            parts.append(f"{shown} {unit}")
    return ", ".join(parts)


def cmd_usage(paths: Paths, args: argparse.Namespace) -> int:
    """The ledger's totals; read straight from the state dir (no supervisor needed)."""
    import time

    from ai_server.base.zones import zone
    from ai_server.observe.usage import report

    cfg = config_mod.read(paths.config_dir)
    tz = zone(cfg.usage.timezone)
    until = time.time()
    since = report.parse_since(args.since, until, tz)
    rows = report.usage(paths.state_dir, since, until, args.by, tz, args.client)
    if args.json:
        print(json.dumps(report.as_json(rows, since, until, args.by), indent=2))
    elif args.csv:
        print(report.as_csv(rows, args.by), end="")
    else:
        print(report.as_table(rows, since, until, args.by, tz))
    return EXIT_OK


def cmd_nodes(paths: Paths, args: argparse.Namespace) -> int:
    answer = control.request(paths.control_socket, "nodes", {"action": args.nodes_command, "name": getattr(args, "name", None)})
    rows = answer["nodes"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = name_width([r["name"] for r in rows])
    for row in rows:
        models = ", ".join(f"{m}{' (loaded)' if loaded else ''}" for m, loaded in row["models"].items()) or "no models"
        error = f"; last error: {row['last_error']}" if row["last_error"] else ""
        print(f"{row['name']:<{width}}{row['state']:<10}{row['in_flight']} in flight of {row['slots']}, "
              f"{row['queued']} queued; {models}{error}")
    return EXIT_OK


def dashboard_url(cfg: config_mod.Config, tailnet_name: Callable[[], str | None]) -> str | None:
    """Where the dashboard is: the first loopback [metrics] listen address, else the first other,
    else this machine's tailnet name (or address) on the metrics port."""
    from ai_server.base.netaddr import host_port, parse_ip
    from ai_server.observe.metrics import DEFAULT_PORT

    explicit = []
    for item in cfg.metrics.listen:
        if item != "tailscale":
            host, _, port = item.rpartition(":")
            explicit.append((parse_ip(host.strip("[]")), int(port)))
    explicit.sort(key=lambda a: not a[0].is_loopback)
    if explicit:
        return f"http://{host_port(str(explicit[0][0]), explicit[0][1])}/"
    name = tailnet_name()
    return None if name is None else f"http://{host_port(name, DEFAULT_PORT)}/"


def _tailnet_name() -> str | None:
    from ai_server.access import tailnet

    found = tailnet.detect()
    return next(iter(found.names), None) or next(iter(found.addresses), None)


def cmd_dashboard(paths: Paths, args: argparse.Namespace) -> int:
    import os
    import webbrowser

    url = dashboard_url(config_mod.read(paths.config_dir), _tailnet_name)
    if url is None:
        raise AiServerError("[metrics] listen is \"tailscale\" and this machine has no tailnet address yet")
    print(url)
    try:
        control.request(paths.control_socket, "status")
    except NotRunning:
        print("ai-server: no supervisor answers yet (`ai-server run`, or the service), so nothing is served there",
              file=sys.stderr)
    # Only where a browser would open on this screen: never a text browser taking the terminal.
    desktop = sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not args.no_open and desktop and sys.stdout.isatty():
        webbrowser.open(url)
    return EXIT_OK


def _program_version(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def cmd_version(paths: Paths, args: argparse.Namespace) -> int:
    import os

    from ai_server.daemon import preflight
    from ai_server.engines import engine_for

    cfg = config_mod.read(paths.config_dir)
    print(f"ai-server {__version__}")
    haproxy_bin = preflight.find_program("haproxy", os.environ)
    print(f"haproxy: {_program_version([haproxy_bin, '-v']) if haproxy_bin else 'not found'}")
    engine_bin = preflight.find_program(cfg.engine.command[0], os.environ)
    print(f"{engine_for(cfg.engine.kind).kind}: {_program_version([engine_bin, '--version']) if engine_bin else 'not found'}")
    return EXIT_OK


def cmd_check(paths: Paths, args: argparse.Namespace) -> int:
    from ai_server import check
    from ai_server.install.system import System

    ctx = check.Context(paths, System(), model=args.model, skip_model=args.skip_model_tests,
                        skip_anthropic=args.skip_anthropic_tests)
    results = check.run(ctx)
    print(check.as_json(results) if args.json else check.render_table(results))
    return EXIT_FAIL if any(r.outcome == "FAIL" for r in results) else EXIT_OK


def _installer(args: argparse.Namespace) -> Installer:
    from ai_server.install.installer import Installer
    from ai_server.install.system import System

    system = System()
    # The service's folders are the target platform's, as `run` under it will see them.
    paths = resolve(args.config_dir, platform=system.platform())
    return Installer(system, paths, yes=args.yes, dry_run=args.dry_run)


def cmd_install(paths: Paths, args: argparse.Namespace) -> int:
    from ai_server.install.installer import ACL_STEPS

    installer = _installer(args)
    installer.perform(installer.install())
    if not args.dry_run:
        cfg = config_mod.read(installer.paths.config_dir)
        print()
        print(ACL_STEPS.format(port=cfg.proxy.port))
    return EXIT_OK


def cmd_uninstall(paths: Paths, args: argparse.Namespace) -> int:
    installer = _installer(args)
    installer.perform(installer.uninstall())
    return EXIT_OK


def cmd_demo(paths: Paths, args: argparse.Namespace) -> int:
    import os

    from ai_server import demo

    if args.config_dir:
        raise AiServerError("demo keeps its own config; leave out --config-dir")
    where = demo.dirs()
    rest = list(args.args) or ["run"]
    serving = rest[0] == "run"
    if serving:
        _refuse_a_second_demo(demo.running(where))
    binary, model = demo.prepare(where)
    if args.port is not None:
        print(f"ai-server demo: {demo.set_port(where, args.port)}", file=sys.stderr)
    os.environ.update(demo.environment(where, binary, os.environ))
    if serving:
        # stdout, flushed: when it is piped (`.ci/dev serve | tee`), these are all it shows.
        print(f"ai-server demo: HAProxy + llama-server + {model.stem} on {demo.url(where)}; config in {where.config} "
              f"(edits are kept), state in {where.state}", flush=True)
        demo.announce_when_ready(where, lambda line: print(line, flush=True))
    return main(["--config-dir", str(where.config), *rest])


def _refuse_a_second_demo(status: dict[str, Any] | None) -> None:
    if status is None:
        return
    listen = ", ".join(f"http://{a}" for a in status["proxy"]["listen"]) or "no address yet"
    pid = status.get("supervisor", {}).get("pid")
    raise AiServerError(f"a demo is already running ({listen}, supervisor pid {pid}): `ai-server demo status` shows it; "
                        "stop it with Ctrl-C where it runs" + (f" or `kill {pid}`" if pid else ""))


def _demo_hint(paths: Paths) -> str | None:
    """When no supervisor answers here but the demo's does: where to look instead."""
    from ai_server import demo

    where = demo.dirs()
    if paths.control_socket == where.state / "control.sock" or demo.running(where) is None:
        return None
    return "a demo is running: use `ai-server demo status` (the demo keeps its own folders)"


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order `--help` lists them: the supervisor's, who may call, the machine."""
    parser = argparse.ArgumentParser(prog="ai-server", description="Serve a private LLM over Tailscale: "
                                     "HAProxy allowlist in front of a loopback-only engine.")
    parser.add_argument("--config-dir", help="folder holding ai-server.toml and allowlist.toml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _supervisor_commands(sub)
    _access_commands(sub)
    _machine_commands(sub)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _supervisor_commands(sub: Commands) -> None:
    sub.add_parser("run", help="the supervisor, in the foreground").set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="the children's states, then the proxy's")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    for command in ("start", "stop", "restart"):
        p = sub.add_parser(command, help=f"{command} one child, or all")
        p.add_argument("name", metavar="NAME|all")
        p.set_defaults(func=_control(command))
    sub.add_parser("reload", help="re-read the config now").set_defaults(func=cmd_reload)
    p = sub.add_parser("tail", help="the structured log")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=20, metavar="N")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--client", metavar="WHO", help="only requests from this client (a clients.toml name, or unknown)")
    p.set_defaults(func=cmd_tail)


def _access_commands(sub: Commands) -> None:
    p = sub.add_parser("allow", help="list or edit allowlist.toml")
    allow = p.add_subparsers(dest="allow_command", required=True, metavar="list|add|remove|preset")
    allow.add_parser("list")
    a = allow.add_parser("add")
    a.add_argument("path")
    a.add_argument("--method", action="append", required=True, metavar="M")
    r = allow.add_parser("remove")
    r.add_argument("path")
    pr = allow.add_parser("preset", help="add the rules a kind of client needs (--list: what each preset holds)")
    pr.add_argument("name", nargs="?", choices=list(presets.PRESETS), metavar="NAME")
    pr.add_argument("--list", action="store_true", help="every preset and its rules")
    p.set_defaults(func=cmd_allow)

    p = sub.add_parser("clients", help="who is calling: identities, policies, load; `clients token NAME`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clients, clients_command=None)
    tokens = p.add_subparsers(dest="clients_command", metavar="token")
    t = tokens.add_parser("token", help="mint a token for NAME (shown once; stored hashed)")
    t.add_argument("name", metavar="NAME")

    p = sub.add_parser("usage", help="tokens, GPU-seconds and requests per client, model, node, day or hour, from the ledger")
    p.add_argument("--since", default="24h", help="24h, 7d, 2026-11-01, 2026-11-01T08:00 (default 24h)")
    p.add_argument("--by", default="client", choices=["client", "model", "node", "day", "hour"])
    p.add_argument("--client", metavar="NAME", help="only this client")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_usage)


def _machine_commands(sub: Commands) -> None:
    p = sub.add_parser("nodes", help="the machines behind this front; `nodes drain|undrain NAME`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nodes, nodes_command=None)
    actions = p.add_subparsers(dest="nodes_command", metavar="drain|undrain")
    for action, what in (("drain", "take NAME out of rotation: what is in flight finishes, nothing new starts"),
                         ("undrain", "put NAME back in rotation")):
        a = actions.add_parser(action, help=what)
        a.add_argument("name", metavar="NAME")

    p = sub.add_parser("warm", help="load models into memory now")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--no-pull", action="store_true", help="fail for a model that is not on this machine")
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser("check", help="verify a live installation end to end")
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", metavar="M", help="the model for the API checks (default: a warmed one)")
    p.add_argument("--skip-model-tests", action="store_true")
    p.add_argument("--skip-anthropic-tests", action="store_true")
    p.set_defaults(func=cmd_check)

    for name, func, what in (("install", cmd_install, "set up the LaunchAgent (macOS) or systemd user unit (Linux)"),
                             ("uninstall", cmd_uninstall, "remove it, with the state and logs")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--yes", action="store_true", help="answer every question with its default")
        p.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
        p.set_defaults(func=func)

    p = sub.add_parser("dashboard", help="print the dashboard's URL (and open it where a browser is at hand)")
    p.add_argument("--no-open", action="store_true", help="only print the URL")
    p.set_defaults(func=cmd_dashboard)
    sub.add_parser("version", help="versions of ai-server, haproxy and the engine").set_defaults(func=cmd_version)
    p = sub.add_parser("demo", help="the whole stack on llama-server + SmolLM2 (the demo extra); ARGS: an ai-server command")
    p.add_argument("--port", type=int, metavar="N", help="the proxy's port (written to the demo's ai-server.toml)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = resolve(args.config_dir)
    command: Callable[[Paths, argparse.Namespace], int] = args.func
    try:
        return command(paths, args)
    except AiServerError as err:
        print(f"ai-server: {err}", file=sys.stderr)
        return EXIT_NO_SUPERVISOR if isinstance(err, NotRunning) and args.command == "status" else EXIT_FAIL
    except KeyboardInterrupt:
        return 130
