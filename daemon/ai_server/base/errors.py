"""The exceptions ai-server raises on purpose.

    AiServerError            one clear line for the user; the CLI prints it and exits 1
    ├── ConfigError          a config file is unreadable or invalid (names file, line, key)
    ├── StateDirError        the state or log dir is not safely ours (owner, mode, symlink)
    ├── PreflightError       `run` cannot start: a binary missing, a port taken, an address not here
    ├── AlreadyRunning       another supervisor holds the state dir
    ├── ControlError         talking to the supervisor failed or it refused the request
    │   └── NotRunning       no supervisor answers on the control socket (status exits 4)
    ├── HaproxyConfigError   `haproxy -c` rejected a generated config
    ├── HaproxyRuntimeError  HAProxy's runtime API refused an update or could not be reached
    ├── WarmError            one model could not be warmed (pulled or loaded)
    ├── LedgerError          the usage ledger cannot be written or read now (disk full, read-only)
    │   └── LedgerCorrupt    its file is damaged or is not a ledger
    ├── DemoError            the demo's engine or model is not installed
    └── InstallError         an install or uninstall step failed

Anything else escaping is a bug, and the CLI shows it as one.
"""

from __future__ import annotations


class AiServerError(Exception):
    """Base class: str(err) is the one line the user sees."""


class ConfigError(AiServerError):
    def __init__(self, file: str, message: str, line: int | None = None, key: str | None = None):
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = file if line is None else f"{file}:{line}"
        what = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {what}")


class StateDirError(AiServerError):
    pass


class PreflightError(AiServerError):
    pass


class AlreadyRunning(AiServerError):
    pass


class ControlError(AiServerError):
    pass


class NotRunning(ControlError):
    pass


class HaproxyConfigError(AiServerError):
    pass


class HaproxyRuntimeError(AiServerError):
    pass


class WarmError(AiServerError):
    pass


class LedgerError(AiServerError):
    pass


class LedgerCorrupt(LedgerError):
    pass


class DemoError(AiServerError):
    pass


class InstallError(AiServerError):
    pass
