"""Actions an install or uninstall takes: described for --dry-run, applied otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ai_server.base.errors import InstallError
from ai_server.base.files import atomic_write


@dataclass(frozen=True)
class WriteFile:
    path: Path
    content: bytes
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path}"

    def apply(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.content, self.mode)


@dataclass(frozen=True)
class MakeDir:
    path: Path

    def describe(self) -> str:
        return f"create {self.path}"

    def apply(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)


@dataclass(frozen=True)
class Remove:
    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Move:
    source: Path
    target: Path

    def describe(self) -> str:
        return f"move {self.source} to {self.target}"

    def apply(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.source, self.target)


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    # A step that may fail without stopping the rest (bootout of an agent that is not loaded).
    may_fail: bool = False
    why: str = ""

    def describe(self) -> str:
        return "run " + " ".join(self.argv) + (f"    # {self.why}" if self.why else "")

    def apply(self) -> None:
        try:
            result = subprocess.run(self.argv, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            if self.may_fail:
                return
            raise InstallError(f"{' '.join(self.argv)}: {err}") from None
        if result.returncode != 0 and not self.may_fail:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise InstallError(f"{' '.join(self.argv)} failed (exit {result.returncode})"
                               + (f": {detail[-1]}" if detail else ""))


@dataclass(frozen=True)
class Call:
    """A step done in Python (waiting for the service to answer, say)."""
    what: str
    function: Callable[[], None] = field(compare=False)

    def describe(self) -> str:
        return self.what

    def apply(self) -> None:
        self.function()


Action = WriteFile | MakeDir | Remove | Move | Run | Call


def perform(actions: Sequence[Action], dry_run: bool, say: Callable[[str], None]) -> None:
    for action in actions:
        say(("would " if dry_run else "") + action.describe())
        if not dry_run:
            action.apply()
