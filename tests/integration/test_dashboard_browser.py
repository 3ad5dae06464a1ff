"""The dashboard in a real browser (Debian's chromium, headless, through selenium): it loads with
no console error, shows the live state, and a generation appears within 2 s of starting and is
filled in when it ends, pushed over its event stream, without a reload."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ai_server.access import clients
from ai_server.observe.dashboard import view
from harness import Stack, browser, finish, have_browser, wait_for

pytestmark = pytest.mark.skipif(not have_browser(), reason="needs chromium and chromium-driver (.ci/dev test installs them)")

TOKEN = "ais_" + "L" * 43
STREAM = {"model": "smollm2:135m", "stream": True, "stream_options": {"include_usage": True},
          "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def dash(make_stack: Any) -> Iterator[tuple[Stack, str]]:
    stack = make_stack()
    (stack.config_dir / "clients.toml").write_text(
        f'[[client]]\nname = "laptop"\ntoken_sha256 = "{clients.token_hash(TOKEN)}"\n')
    stack.start()
    yield stack, stack.metrics_url + "/"


def row_ids(driver: Any) -> list[str]:
    return list(driver.execute_script("return [...document.querySelectorAll('#rows tr')].map(r => r.id);"))


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def test_the_page_loads_live_without_a_console_error(dash: tuple[Stack, str]) -> None:
    stack, url = dash
    with browser() as driver:
        driver.get(url)
        wait_for(lambda: text_of(driver, "live") == "live", what="the event stream connected")
        children = text_of(driver, "children")
        assert "ollama" in children and "haproxy" in children and children.count("RUNNING") == 2
        assert "4 engine slots" in text_of(driver, "slots")
        assert "/v1/chat/completions" in text_of(driver, "config")
        # A change pushed, not polled: stopping the engine shows within a second or so.
        assert stack.cli("stop", "ollama").returncode == 0
        wait_for(lambda: "STOPPED" in text_of(driver, "children"), what="the stopped engine on the page")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == []


def test_a_generation_appears_while_it_runs_and_fills_in_when_it_ends(dash: tuple[Stack, str]) -> None:
    stack, url = dash
    for _ in range(2):   # rows from before the page opened
        assert httpx.get(stack.url("/api/version"), timeout=10).status_code == 200
    wait_for(lambda: len(stack.events("request")) == 2, what="two requests logged")
    with browser() as driver:
        driver.get(url)
        wait_for(lambda: text_of(driver, "live") == "live", what="the event stream connected")
        # The stream's first event holds every row; 'live' shows as soon as it opens, maybe before.
        assert wait_for(lambda: row_ids(driver), what="the rows pushed") == ["r2", "r1"]   # newest on top
        stack.hold()
        answers: list[int] = []

        def generate() -> None:
            with httpx.stream("POST", stack.url("/v1/chat/completions"), json=STREAM, timeout=60,
                              headers={"Authorization": f"Bearer {TOKEN}", "X-Test-Client": "laptop"}) as response:
                response.read()
                answers.append(response.status_code)

        thread = threading.Thread(target=generate)
        thread.start()
        try:
            pending = "return [...document.querySelectorAll('#rows tr.pending')].map(r => [r.id, r.innerText]);"
            row_id, text = wait_for(lambda: next(iter(driver.execute_script(pending)), None), 2, interval=0.05,
                                    what="the generation's row, within 2 s of its start")
            assert row_ids(driver) == [row_id, "r2", "r1"]   # newest on top
            assert "laptop" in text and "smollm2:135m" in text
            calling = text_of(driver, "calling")
            assert "laptop" in calling and "smollm2:135m" in calling
        finally:
            stack.release()
            finish(thread)
        assert answers == [200]

        def finished() -> str | None:
            # Read in one go in the page: the row is replaced, not changed, when its record arrives.
            return driver.execute_script("const row = document.getElementById(arguments[0]);"
                                         "return row && !row.classList.contains('pending') ? row.innerText : null;", row_id)

        done = wait_for(finished, what="the same row filled in")
        cells = done.split()
        assert "200" in cells and "POST" in cells
        # Its tokens are what the engine said it produced, and they reach the usage charts.
        produced = [p for p in stack.produced() if p["client"] == "laptop"]
        assert len(produced) == 1
        texts = driver.execute_script("return [...document.getElementById(arguments[0]).cells].map(c => c.innerText);", row_id)
        head = list(view.REQUEST_HEAD)
        assert texts[head.index("tokens in")] == f"{produced[0]['input']:,}"
        assert texts[head.index("tokens out")] == f"{produced[0]['output']:,}"
        wait_for(lambda: "laptop" in text_of(driver, "usage"), what="laptop's tokens in today's usage")
        wait_for(lambda: "nobody is generating" in text_of(driver, "calling"), what="nobody calling any more")
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


def test_the_page_without_javascript_shows_the_state(dash: tuple[Stack, str]) -> None:
    stack, url = dash
    assert httpx.post(stack.url("/v1/chat/completions"), json={**STREAM, "stream": False}, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    wait_for(lambda: stack.events("request", who="laptop"), what="the request logged")
    page = httpx.get(url, timeout=10).text
    assert "RUNNING" in page and "laptop" in page and "smollm2:135m" in page
    filtered = httpx.get(url, params={"client": "nobody"}, timeout=10).text
    assert 'data-who="laptop"' not in filtered and 'data-who="laptop"' in page


def test_the_dashboard_command_prints_where_it_is(dash: tuple[Stack, str]) -> None:
    stack, url = dash
    shown = stack.cli("dashboard")
    assert shown.returncode == 0 and shown.stdout == url + "\n" and shown.stderr == ""
    stack.stop()
    alone = stack.cli("dashboard", "--no-open")
    assert alone.returncode == 0 and alone.stdout == url + "\n" and "no supervisor answers" in alone.stderr
