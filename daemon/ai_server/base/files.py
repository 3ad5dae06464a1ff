"""Files and folders the daemon writes: whole or not at all, never through a planted link.

The state dir holds the control socket, the children record and the Lua HAProxy loads, so a
folder another local user could write to would hand them the supervisor. It must be ours and
closed to others; files in it are replaced by rename, never opened for writing by name.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ai_server.base.errors import StateDirError


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename: readers see the old file or the new one.

    The temporary file is created with O_EXCL (and O_NOFOLLOW) by mkstemp, so a symlink planted
    at any name in the folder is never written through; the rename replaces a link at `path`
    itself rather than following it."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_keeping_mode(path: Path, text: str, default_mode: int = 0o644) -> None:
    """Replace a file a person edits, as editors do (write, then rename: a watcher sees one
    whole file), keeping its permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = default_mode
    atomic_write(path, text, mode)


def private_dir(path: Path, what: str) -> Path:
    """Create `path` (0700) or accept it only if it is a real folder of ours that group and
    others cannot write. StateDirError (one line) otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(path)
    except OSError as err:
        raise StateDirError(f"{what} {path}: cannot create it: {err.strerror or err}") from None
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(f"{what} {path} is a symlink; point AI_SERVER_STATE_DIR / AI_SERVER_LOG_DIR "
                            "at the real folder") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{what} {path} is not a folder")
    if info.st_uid != os.getuid():
        raise StateDirError(f"{what} {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                            "another user could control ai-server through it: remove it or choose another")
    if info.st_mode & 0o022:
        raise StateDirError(f"{what} {path} can be written by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
                            f"`chmod 700 {path}` or remove it")
    return path
