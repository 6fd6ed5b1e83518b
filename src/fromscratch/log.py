"""Messages through ``logging``, printed by rank 0 only (detectron2's ``setup_logger``).

Every module logs to ``logging.getLogger(__name__)`` under the ``fromscratch`` logger. ``setup_logging``
(called by the CLI and the trainer) adds one handler on stdout whose filter drops records of ranks > 0,
so a run on 8 processes prints each message once; warnings and errors of every rank still show.
"""
from __future__ import annotations

import logging
import os
import sys

ROOT = "fromscratch"
FORMAT = "[%(asctime)s %(name)s] %(message)s"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (stdout, as detectron2's logger; a test's capture)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def process_rank() -> int:
    """This process's rank: the process group's when one is up, else torchrun's ``RANK`` (so logging
    never imports torch: ``fromscratch --help`` and ``validate`` stay fast)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


class RankZeroFilter(logging.Filter):
    """Let through rank 0's records, and every rank's warnings and errors (tagged with the rank)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = process_rank()
        if rank == 0:
            return True
        if record.levelno >= logging.WARNING:
            record.msg = f"[rank {rank}] {record.msg}"
            return True
        return False


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Configure the ``fromscratch`` logger once (idempotent); returns it."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_fromscratch", False) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        handler.addFilter(RankZeroFilter())
        handler._fromscratch = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger

