"""WebDataset shards: `NNNNNN.tar` files whose samples are the members sharing a key
(`KEY.jpg`, `KEY.flac`, `KEY.json`). Tar headers are fixed (mtime 0, owner 0, mode 0444), so the same
samples always give the same bytes, and a shard is written atomically."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

from stages import storage


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar of samples in the given order; each sample's members in sorted extension order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key.rsplit("/", 1)[-1]:
                raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
            for extension in sorted(members):
                payload = members[extension]
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def plan_shards(sizes: list[int], target_bytes: int) -> list[int]:
    """Shard index of each sample, in order: a new shard starts when the next sample would push the
    current one past the target (a sample larger than the target gets a shard of its own)."""
    assignment, shard, used = [], 0, 0
    for size in sizes:
        if used and used + size > target_bytes:
            shard, used = shard + 1, 0
        assignment.append(shard)
        used += size
    return assignment


def write_shard(url: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    data = tar_bytes(samples)
    storage.write_bytes(url, data)
    return len(data)
