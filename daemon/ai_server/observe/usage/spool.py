"""The request log file (`requests.spool` in the state dir): what HAProxy writes, losslessly, for
the supervisor to read.

The supervisor creates it, with a header line naming it, and keeps it open for writing with
O_APPEND; HAProxy gets that descriptor when it starts (render.py: `log fd@N`) and keeps it across
reloads (the metering Lua's start lines have their own file, starts.spool). Every line is one write()
to a regular file with O_APPEND: never refused, never interleaved with another, and never
dropped because HAProxy runs one thread (render.py says why).
The supervisor reads it from where the ledger last committed (the offset lives in the ledger,
keyed by the header's id) and reclaims what it has read by punching holes behind that offset
(fallocate on Linux, F_PUNCHHOLE on macOS), so the file's size grows but its disk use does not.
Each supervisor starts a new file; one a previous supervisor left (it was killed) is renamed
requests.<id>.spool and read to its end first, then removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import sys
import time
import uuid
from pathlib import Path

from ai_server.base import logs

HEADER = "ai-server-spool"
# Holes are punched in steps of this much (a multiple of every file system's block size).
RECLAIM_STEP = 16 * 1024 * 1024
_ALIGN = 1024 * 1024


_ID = re.compile(r"[0-9a-f]{32}")


def header_id(path: Path) -> str | None:
    """The id in a request log's header line, or None when it has none (not one of ours)."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    parts = first.decode("ascii", "replace").split()
    return parts[1] if len(parts) >= 2 and parts[0] == HEADER and _ID.fullmatch(parts[1]) else None


class Spool:
    """One request log file, open for HAProxy to append to and for us to read; how far it has
    been read (and published), and how far the ledger has it."""

    def __init__(self, path: Path, spool_id: str, write_fd: int | None, start: int) -> None:
        self.path = path
        self.id = spool_id
        self.write_fd = write_fd        # None: an old file, read to its end, no longer written
        self.start = start              # the offset of the first line after the header
        self.read_at = start
        self.committed = start
        self._read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._reclaimed = 0
        self._can_punch = write_fd is not None

    id_of = staticmethod(header_id)

    @staticmethod
    def pending_name(spool_id: str) -> str:
        return f"requests.{spool_id}.spool"

    @staticmethod
    def pending_paths(state_dir: Path) -> list[Path]:
        """Request logs previous supervisors left, oldest first."""
        found = [p for p in state_dir.glob("requests.*.spool") if _ID.fullmatch(p.name.split(".")[1])]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    @classmethod
    def create(cls, path: Path) -> Spool:
        """A new, empty request log (whatever was at `path` is replaced: read it first)."""
        spool_id = uuid.uuid4().hex
        header = f"{HEADER} {spool_id} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode()
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.write(fd, header)
        return cls(path, spool_id, fd, len(header))

    @classmethod
    def existing(cls, path: Path) -> Spool | None:
        """The request log a previous supervisor left, to be read to its end; None if none."""
        spool_id = header_id(path)
        if spool_id is None:
            return None
        with path.open("rb") as handle:
            start = len(handle.readline(256))
        return cls(path, spool_id, None, start)

    def size(self) -> int:
        return os.fstat(self._read_fd).st_size

    def read(self, offset: int, limit: int = 1 << 20) -> tuple[list[str], int]:
        """Complete lines from `offset` (at most about `limit` bytes of them) and the offset just
        past the last one. A line still being written stays for the next read."""
        data = os.pread(self._read_fd, limit, offset)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= limit:  # one line longer than limit: HAProxy never writes one; skip it
                return [], offset + len(data)
            return [], offset
        lines = data[:end].decode("utf-8", "replace").split("\n")
        return lines, offset + end + 1

    def reclaim(self, offset: int) -> None:
        """Give back the disk space of what has been read (and committed) up to `offset`."""
        if not self._can_punch or self.write_fd is None:
            return
        upto = (offset // _ALIGN) * _ALIGN
        if upto - self._reclaimed < RECLAIM_STEP:
            return
        if punch_hole(self.write_fd, 0, upto):
            self._reclaimed = upto
        else:
            self._can_punch = False
            logs.get().warning("spool_not_reclaimed", file=str(self.path),
                               reason="this file system cannot punch holes; the request log grows until the next start")

    def close(self) -> None:
        os.close(self._read_fd)
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None


# -- punching holes ----------------------------------------------------------------------------

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_F_PUNCHHOLE = 99   # macOS <sys/fcntl.h>


class _FPunchhole(ctypes.Structure):
    _fields_ = [("fp_flags", ctypes.c_uint), ("reserved", ctypes.c_uint), ("fp_offset", ctypes.c_int64),
                ("fp_length", ctypes.c_int64)]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate [offset, offset + length) of a file, keeping its size; False where the system
    or the file system cannot."""
    if length <= 0:
        return True
    libc = _libc()
    if libc is None:
        return False
    if sys.platform == "darwin":
        args = _FPunchhole(0, 0, offset, length)
        fcntl = libc.fcntl
        fcntl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_FPunchhole)]
        result = fcntl(fd, _F_PUNCHHOLE, ctypes.byref(args))
    elif hasattr(libc, "fallocate"):
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        result = fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        logs.get().warning("spool_punch_failed", error=os.strerror(code))
    return False
