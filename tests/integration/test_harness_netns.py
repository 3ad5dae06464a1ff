"""The network fixtures' own hygiene: what a run that died left in this network namespace must
not take the next run's routes (a stale bridge holding the LAN's address made every test of
several machines fail with "connection refused")."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from harness import LAN_SELF, netns_lock, sh, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")


def test_what_a_dead_run_left_is_swept_when_the_lock_is_taken() -> None:
    bridge, ns = "aisb99999", "aisl99999"
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{LAN_SELF}/24", "dev", bridge)
    sh("ip", "netns", "add", ns)
    orphan = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        wait_for(lambda: sh("ip", "netns", "pids", ns).stdout.split(), what="the orphan in its namespace")
        with netns_lock():
            assert bridge not in sh("ip", "-o", "link", "show").stdout
            assert ns not in sh("ip", "netns", "list").stdout
            assert orphan.wait(timeout=10) != 0
    finally:
        orphan.kill()
        orphan.wait()
        sh("ip", "link", "del", bridge, check=False)
        sh("ip", "netns", "del", ns, check=False)


def test_the_lock_is_held_across_processes_and_free_once_let_go() -> None:
    probe = "import socket; socket.socket(socket.AF_UNIX).bind('\\0ai-server-tests-netns')"
    with netns_lock():
        held = subprocess.run(["python3", "-c", probe], capture_output=True, text=True)
        assert held.returncode != 0 and "Address already in use" in held.stderr
    assert subprocess.run(["python3", "-c", probe]).returncode == 0
