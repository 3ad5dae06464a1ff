"""HAProxy: the config (render.py, pure), the maps it decides from (maps.py), the Lua it loads
(lua.py), its runtime API (runtime.py) and its access log (logfmt.py).

Here: writing all of it to the state dir, checked together by `haproxy -c` before any of it
replaces what the running proxy uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ai_server.base.errors import HaproxyConfigError
from ai_server.base.files import atomic_write
from ai_server.haproxy import lua, maps, meter
from ai_server.haproxy.lua import LUA
from ai_server.haproxy.maps import MapFile
from ai_server.haproxy.meter import METER_LUA
from ai_server.haproxy.render import RenderInput, render

CONFIG = "haproxy.cfg"
# The folder (in the state dir) where a new config is checked before it replaces the old.
TRIAL_DIR = ".trial-"


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
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        complaints = [line for line in lines if "ALERT" in line] or lines or [f"exit status {result.returncode}"]
        raise HaproxyConfigError(f"haproxy -c rejected the generated config: {complaints[0]}")


def install(program: str, spec: RenderInput, map_files: list[MapFile], state_dir: Path) -> bool:
    """haproxy.cfg and the maps, checked together before any replaces what the proxy runs on.
    True when haproxy.cfg itself changed (a reload is needed); False when only the maps did
    (runtime.swap applies them live).

    haproxy.cfg is rendered once: `haproxy -c` checks that very text in a trial folder inside
    the state dir, beside the new maps and Lua under their own names (the config names every
    file relative to its own folder: default-path config), so what was checked is what runs."""
    text = render(spec)
    generated = {item.name: item.text() for item in map_files}
    if spec.lua:
        generated[LUA] = lua.source()
        generated[METER_LUA] = meter.source()
        if not (state_dir / maps.HOLD).exists():
            atomic_write(state_dir / maps.HOLD, maps.hold_map(False).text())
    trial = Path(tempfile.mkdtemp(prefix=TRIAL_DIR, dir=state_dir))
    try:
        _stage_trial(trial, state_dir, generated, text)
        check(program, trial / CONFIG)
        for name in generated:
            os.replace(trial / name, state_dir / name)
    finally:
        shutil.rmtree(trial, ignore_errors=True)
    target = state_dir / CONFIG
    try:
        changed = target.read_text(encoding="utf-8") != text
    except FileNotFoundError:
        changed = True
    if changed:
        atomic_write(target, text)
    return changed


def _stage_trial(trial: Path, state_dir: Path, generated: dict[str, str], text: str) -> None:
    """The trial folder: the generated files, haproxy.cfg, and a link to every other file of
    the state dir the config may name (the hold map, the certificate), as HAProxy will see them."""
    for name, content in generated.items():
        atomic_write(trial / name, content)
    atomic_write(trial / CONFIG, text)
    for entry in state_dir.iterdir():
        if entry.name not in generated and entry.name != CONFIG and entry.is_file() and not entry.is_symlink():
            (trial / entry.name).symlink_to(Path("..") / entry.name)


def set_hold_file(state_dir: Path, on: bool) -> None:
    """What a (re)starting HAProxy reads: hold or not."""
    atomic_write(state_dir / maps.HOLD, maps.hold_map(on).text())
