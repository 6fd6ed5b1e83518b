"""The one exception type users see for their own mistakes (data, config, files).

The CLI prints a ``FromScratchError`` as a plain message and exits 2 (1 for ``validate`` findings);
anything else is an internal error and keeps its traceback, with a line asking to report it.
"""
from __future__ import annotations


class FromScratchError(Exception):
    """A mistake the user can fix: the message names the file, the record and the field."""


class ConfigError(FromScratchError):
    """A config file or override that does not fit the schema."""


class DataError(FromScratchError):
    """A dataset file that cannot be read or does not pass validation."""


class Stopped(FromScratchError):
    """A run stopped cleanly on SIGTERM/SIGINT after writing a checkpoint."""



class StorageError(FromScratchError):
    """A file could not be written (full disk, quota, file-size limit, read-only mount): the message names
    the file and the cause; what was written before (the previous checkpoint, the complete lines of
    metrics.jsonl) is intact."""


class RunLocked(FromScratchError):
    """Another live process holds the run or study folder's lock (the message names host, PID, start)."""
