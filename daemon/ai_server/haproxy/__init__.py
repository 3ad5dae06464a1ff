"""HAProxy: the config (render.py, pure), the maps it decides from (maps.py), the Lua it loads
(lua.py), its runtime API (runtime.py) and its access log (logfmt.py).

Here: writing all of it to the state dir, checked together by `haproxy -c` before any of it
replaces what the running proxy uses.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

from ai_server.base.errors import HaproxyConfigError
from ai_server.base.files import atomic_write
from ai_server.haproxy import maps
from ai_server.haproxy.lua import LUA, lua
from ai_server.haproxy.maps import MapFile
from ai_server.haproxy.render import RenderInput, render

CONFIG = "haproxy.cfg"
TRIAL = ".new"


def has_lua(program: str) -> bool:
    try:
        result = subprocess.run([program, "-vv"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "+LUA" in result.stdout or "USE_LUA=1" in result.stdout


def check(program: str, path: Path) -> None:
    """`haproxy -c -f path`, run where HAProxy runs; HaproxyConfigError with its own complaint."""
    result = subprocess.run([program, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
                            cwd=path.parent)
    if result.returncode != 0:
        lines = [l.strip() for l in (result.stderr + result.stdout).splitlines() if l.strip()]
        complaints = [l for l in lines if "ALERT" in l] or lines or [f"exit status {result.returncode}"]
        raise HaproxyConfigError(f"haproxy -c rejected the generated config: {complaints[0]}")


def install(program: str, spec: RenderInput, map_files: list[MapFile], state_dir: Path) -> bool:
    """haproxy.cfg and the maps, checked together before any replaces what the proxy runs on.
    True when haproxy.cfg itself changed (a reload is needed); False when only the maps did
    (runtime.swap applies them live)."""
    ollama = spec.config.engine.kind == "ollama" and not spec.config.fronting
    for item in map_files:
        atomic_write(state_dir / (item.name + TRIAL), item.text())
    if spec.lua:
        atomic_write(state_dir / (LUA + TRIAL), lua(spec.config.proxy.queue_timeout, ollama, TRIAL))
        if not (state_dir / maps.HOLD).exists():
            atomic_write(state_dir / maps.HOLD, maps.hold_map(False).text())
    trial = state_dir / (CONFIG + ".trial")
    atomic_write(trial, render(replace(spec, map_suffix=TRIAL)))
    try:
        check(program, trial)
    except BaseException:
        for item in map_files:
            (state_dir / (item.name + TRIAL)).unlink(missing_ok=True)
        raise
    finally:
        trial.unlink(missing_ok=True)
        (state_dir / (LUA + TRIAL)).unlink(missing_ok=True)
    for item in map_files:
        os.replace(state_dir / (item.name + TRIAL), state_dir / item.name)
    if spec.lua:
        atomic_write(state_dir / LUA, lua(spec.config.proxy.queue_timeout, ollama))
    text = render(spec)
    target = state_dir / CONFIG
    try:
        changed = target.read_text(encoding="utf-8") != text
    except FileNotFoundError:
        changed = True
    if changed:
        atomic_write(target, text)
    return changed


def set_hold_file(state_dir: Path, on: bool) -> None:
    """What a (re)starting HAProxy reads: hold or not."""
    atomic_write(state_dir / maps.HOLD, maps.hold_map(on).text())
