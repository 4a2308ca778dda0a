"""A write that finds the device full: the one error a rerun can recover from once space is freed,
told apart from every other OSError so the run stops with one line naming the folder."""

from __future__ import annotations

import errno

from schemas.errors import PipelineError

FULL_DEVICE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(PipelineError):
    """A write found no space left where it writes. Everything finished before it is kept (each
    file is whole or absent), so the same command, run again once space is freed, goes on."""


def disk_full(exc: BaseException, folder: str) -> DiskFull | None:
    """The DiskFull that `exc` means for a write into `folder`, or None when it means something else."""
    if isinstance(exc, OSError) and exc.errno in FULL_DEVICE_ERRORS:
        return DiskFull(
            f"no space left on the device holding {folder} ({exc.strerror}); free space there and run the "
            "same command again: finished work is kept"
        )
    return None
