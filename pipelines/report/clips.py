"""The sonify report's most used clips: each clip's audio at the mix rate, read by its byte range
from the pool's pack (where sonify.out/mix_clips.parquet says it is) and copied beside the page."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from schemas.layout import PoolLayout, SonifyLayout
from schemas.report_layout import ReportLayout
from stages.io import storage


def top_clip_players(
    run: SonifyLayout,
    pool: PoolLayout,
    rate: int,
    clips: list[dict],
    add: Callable[[str, bytes], str],
    file_name: Callable[[int], str] = ReportLayout.top_clip,
) -> list[dict]:
    """`clips` (top_used_clips rows), each with `audio` (its page-relative file by rank, named by
    `file_name` and added through `add`) or, where it cannot be read, `problem` saying why."""
    shown = [dict(c, audio=None, problem=None) for c in clips]
    if not shown:
        return shown
    if not storage.exists(run.mix_clips()):
        for clip in shown:
            clip["problem"] = f"{run.mix_clips()} is missing: the run did not reach retrieval"
        return shown
    table = storage.read_parquet(run.mix_clips())
    wanted = pa.array([c["clip_id"] for c in shown], pa.string())
    located = table.filter(pc.is_in(table.column("clip_id"), value_set=wanted)).to_pylist()
    where = {row["clip_id"]: row for row in located}
    for rank, clip in enumerate(shown, start=1):
        row = where.get(clip["clip_id"])
        if row is None:
            clip["problem"] = f"not in {run.mix_clips()} (not audible at {rate} Hz in this pool)"
            continue
        url = pool.mix_audio(row["part"], rate)
        try:
            (data,) = storage.read_ranges(url, [(row["audio_offset"], row["audio_bytes"])])
        except OSError as exc:
            clip["problem"] = f"{url}: cannot read the clip ({type(exc).__name__}: {exc})"
            continue
        clip["audio"] = add(file_name(rank), data)
    return shown
