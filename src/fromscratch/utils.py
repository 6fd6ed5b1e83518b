"""Small helpers shared by every stage: atomic file writes (storage faults reported as
``StorageError``), the run/study folder lock, the one reader of torch files."""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from fromscratch.errors import FromScratchError, RunLocked, StorageError

logger = logging.getLogger(__name__)

WRITE_FAULTS = _CAUSES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file-size limit (ulimit -f) is reached", errno.EROFS: "the filesystem is read-only"}


def storage_error(path: Path, e: OSError, what: str = "file") -> StorageError:
    """A ``StorageError`` naming the file, the OS's reason and, where known, the plain cause."""
    cause = _CAUSES.get(e.errno or 0)
    reason = f"{e.strerror or e}" + (f": {cause}" if cause else "")
    return StorageError(f"{path}: could not write the {what} ({reason}); the previous version of the file, if "
                        "any, is intact. Free space (or raise the limit) and run the same command with --resume "
                        "where it trains.")


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Write to a temp file in the same folder, fsync, check its size, then rename: a reader never sees
    half a file, and a full disk or file-size limit leaves the previous file intact (``StorageError``)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if os.fstat(f.fileno()).st_size != len(data):
                raise OSError(errno.EIO, f"wrote {os.fstat(f.fileno()).st_size} of {len(data)} bytes")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise storage_error(path, e, what) from None
    except BaseException:
        _discard(tmp)
        raise


def save_figure(fig: Any, path: Path, dpi: int = 90) -> None:
    """A matplotlib figure written as PNG atomically (a full disk leaves the previous plot intact)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue(), "plot")


def _discard(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        os.unlink(tmp)


def append_line(f: Any, path: Path, line: str, what: str = "file") -> None:
    """Append one text line to ``f`` (a file opened ``"ab", buffering=0``) whole or not at all: a short
    write (full disk, file-size limit) is cut back to the previous end, so the file never ends with a
    torn line, and raised as ``StorageError``."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    end = os.fstat(f.fileno()).st_size
    try:
        view = memoryview(data)
        while view:  # a short write is retried once more: the OS then reports why it stopped
            n = f.write(view)
            view = view[n:]
    except OSError as e:
        os.ftruncate(f.fileno(), end)
        raise storage_error(path, e, what) from None


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def sha256_prefix(path: Path, n: int = 12) -> str:
    """The first ``n`` hex digits of a file's SHA-256 (what the run's init line shows)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def load_weights_only(path: Path, what: str = "weights") -> Any:
    """Every weights and checkpoint file is read here, with ``torch.load(weights_only=True)``: a
    pickle that carries code is refused, never run. ``what`` names the file's role in the message."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FromScratchError(f"{what}: file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code-carrying pickles, RuntimeError for non-torch files
        raise FromScratchError(f"{path}: refused or unreadable as {what} (loaded with weights_only=True, so a "
                               f"pickle that carries code is refused): {str(e).splitlines()[0]}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class FolderLock:
    """One writer per folder: an exclusive ``flock`` on ``<folder>/<name>``, whose text names the holder
    (host, PID, start time, command). The kernel drops the lock when its process dies, however it dies,
    so a lock left by a killed process is free: the next process takes it over and says whose it was.
    Where the filesystem has no ``flock``, the holder's PID is checked instead (same host only).

    The file is never deleted (deleting it would let two processes lock two different files); a
    released lock is an empty file."""

    def __init__(self, folder: Path, name: str = "run.lock", what: str = "run folder") -> None:
        self.path, self.what = Path(folder) / name, what
        self.file: Any = None

    def holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def describe(h: dict[str, Any]) -> str:
        return (f"host {h.get('host', '?')}, PID {h.get('pid', '?')}, since {h.get('started', '?')}"
                f"{', command: ' + h['command'] if h.get('command') else ''}")

    def acquire(self) -> FolderLock:
        import fcntl
        import sys

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunLocked(f"{self.path.parent}: this {self.what} is in use by another process "
                                    f"({self.describe(self.holder())}); two processes must not write one "
                                    f"{self.what}. Wait for it to end, or stop it (kill PID) and run again.") from None
                self._no_flock(e)
            except RunLocked:
                f.close()
                raise
        before = self.holder()
        if before.get("pid"):
            logger.info(f"{self.path}: taking over the lock of a process that has ended ({self.describe(before)})")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}))
        f.flush()
        self.file = f
        return self

    def _no_flock(self, e: OSError) -> None:
        """A filesystem without flock: refuse only a holder that is alive on this host."""
        h = self.holder()
        if h.get("host") == socket.gethostname() and h.get("pid") and h["pid"] != os.getpid() and _alive(h["pid"]):
            raise RunLocked(f"{self.path.parent}: this {self.what} is in use by another process "
                            f"({self.describe(h)}).") from None
        logger.warning(f"{self.path}: the filesystem does not lock files ({e.strerror}); checked the holder's PID")

    def release(self) -> None:
        if self.file is None:
            return
        import fcntl

        try:
            self.file.seek(0)
            self.file.truncate()
            self.file.flush()
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        except OSError:
            pass  # closing drops the lock anyway
        self.file.close()
        self.file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
