"""Small helpers shared by every stage: atomic file writes, the one reader of torch files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fromscratch.errors import FromScratchError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
