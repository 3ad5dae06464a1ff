#!/usr/bin/env python3
"""The dashboard's screenshots in the README and docs/dashboard.md, taken from a real stack:
ai-server with HAProxy in front of the Ollama stand-in, four clients calling it (two generations
held in progress, the rest finished, one device probing), in headless chromium at 1280 and 390
pixels wide.

    .venv/bin/python docs/images/screenshots.py      # writes docs/images/dashboard-{1280,390}.png
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from ai_server.access import clients  # noqa: E402
from harness import browser, dispose, new_stack, wait_for  # noqa: E402

OUT = ROOT / "docs" / "images"
TOKENS = {name: "ais_" + name[0].upper() * 43 for name in ("laptop", "ci", "phone", "family")}
PRIORITY = {"laptop": "interactive", "ci": "batch", "phone": "normal", "family": "normal"}
MODELS = ("qwen2.5-coder:32b", "llama3.1:8b", "smollm2:135m")


def main() -> int:
    stack = new_stack(engine_env={"FAKE_OLLAMA_MODELS": ",".join(MODELS), "FAKE_OLLAMA_TOKENS": "24"})
    hold = stack.hold_file
    port = stack.metrics_port
    stack.write_config(stack.default_config().replace("[engine]\n", "[engine]\nparallel = 2\n"))
    (stack.config_dir / "clients.toml").write_text("".join(
        f'[[client]]\nname = "{n}"\ntoken_sha256 = "{clients.token_hash(t)}"\npriority = "{PRIORITY[n]}"\n\n'
        for n, t in TOKENS.items()))
    threads = []
    try:
        stack.start()
        with httpx.Client(timeout=30) as client:
            for i in range(14):
                who = list(TOKENS)[i % 4]
                client.post(stack.url("/v1/chat/completions"), headers={"Authorization": f"Bearer {TOKENS[who]}"},
                            json={"model": MODELS[i % 3], "messages": [{"role": "user", "content": "hi"}]})
            for path in ("/api/pull", "/api/delete", "/v1/embeddings", "/api/create"):
                client.post(stack.url(path), json={})
        hold.touch()
        for who, model in (("laptop", MODELS[0]), ("ci", MODELS[1]), ("phone", MODELS[0])):
            body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "write a poem"}]}

            def generate(who: str = who, body: dict = body) -> None:
                with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=120,
                                  headers={"Authorization": f"Bearer {TOKENS[who]}"}) as response:
                    response.read()
            threads.append(threading.Thread(target=generate))
            threads[-1].start()
        for width, height in ((1280, 1400), (390, 1700)):
            with browser(width, height) as driver:
                driver.get(f"http://127.0.0.1:{port}/")
                wait_for(lambda: driver.find_element("id", "live").text == "live", 10)
                wait_for(lambda: len(driver.find_elements("css selector", "#calling tbody tr")) == 3, 10)
                time.sleep(3)   # elapsed times worth showing
                driver.save_screenshot(str(OUT / f"dashboard-{width}.png"))
                print(OUT / f"dashboard-{width}.png")
        return 0
    finally:
        hold.unlink(missing_ok=True)
        for thread in threads:
            thread.join(60)
        dispose(stack)


if __name__ == "__main__":
    sys.exit(main())
