"""The exception hierarchy.

`UsageError` and its subclasses are mistakes a user can fix (a bad config, a missing key
file, a port in use); the CLIs print their message as one line and exit 2. A
`ResourceError` is the machine refusing something (a full disk, a permission, a read-only
file system): one line naming the path and the fix, exit 3. `RejectedMessage`
is raised by network-facing decoders and is always caught by the node, which logs and counts
it instead of crashing. Everything else is a bug and keeps its traceback. `brief` quotes an
untrusted value in an error message.
"""

import errno
import reprlib
from typing import Any


class _Brief(reprlib.Repr):
    """repr() with bounded nesting and length. A peer's msgpack value can be nested about a
    thousand deep, where repr() itself raises RecursionError, or be megabytes long."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 40

    def repr_bytes(self, value: bytes, level: int) -> str:
        # reprlib has no bytes rule: it would repr the whole value and then cut it.
        return repr(value[: self.maxstring]) + ("..." if len(value) > self.maxstring else "")


_BRIEF = _Brief()


def brief(value: Any) -> str:
    """A short repr of `value`, safe for anything a peer can send."""
    return _BRIEF.repr(value)


class SwarmError(Exception):
    """Base class for every error this project raises on purpose."""

    exit_code = 1


class ResourceError(SwarmError):
    """The machine refused a resource the node needs; the message names the path and the fix."""

    exit_code = 3


_RESOURCES = {
    errno.ENOSPC: ("its file system is full", "free space on it (`df -h`)"),
    errno.EDQUOT: ("the disk quota is used up", "free space or raise the quota"),
    errno.EACCES: ("permission denied", "give the user that runs the node write access to the site directory"),
    errno.EPERM: ("operation not permitted", "give the user that runs the node write access to the site directory"),
    errno.EROFS: ("its file system is read-only", "put the site directory on a writable file system"),
    errno.EFBIG: ("the file would exceed this process's file-size limit", "raise the limit (`ulimit -f`, LimitFSIZE=)"),
}


def resource_error(exc: OSError, then: str = "start the node again") -> ResourceError | None:
    """The one-line ResourceError for an OSError the machine caused; None for any other
    (a bug, which keeps its traceback)."""
    known = _RESOURCES.get(exc.errno) if exc.errno is not None else None
    if known is None:
        return None
    problem, fix = known
    where = exc.filename if exc.filename is not None else "a file of the site directory"
    return ResourceError(f"cannot write {where}: {problem}; {fix}, then {then} "
                         "(what was written before is whole: every write is atomic)")


class UsageError(SwarmError):
    """Something the user can fix: the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(UsageError):
    """A site, scenario or plan setting is missing or invalid."""


class KeyFileError(UsageError):
    """A key file is missing, unreadable, or not a key."""


class ManifestError(UsageError):
    """The federation manifest is malformed, unsigned, or does not verify."""


class LogError(SwarmError):
    """An update log or one of its entries fails verification.

    `where` names the file and entry, `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "", where: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.where = where
        text = f"{where}: " if where else ""
        super().__init__(f"{text}{reason}" + (f" ({detail})" if detail else ""))


class RejectedMessage(SwarmError):
    """A message from the network that this node refuses; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason + (f": {detail}" if detail else ""))
