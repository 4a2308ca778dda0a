"""The audio files of one pool part, written as its sources' clips arrive, so a part of multi-hour
sources is never held in memory whole.

A source's clips wait in `SourceClips` (rows in memory, FLAC bytes in a temporary file that stays
in memory up to SPOOL_MEMORY_BYTES) until the whole source is standardized; only then do they go to
the part's files (`PartWriter`). A source that fails midway is one error row and leaves nothing in
the part. The part's audio file and its packs are written through storage.open_for_writing: they
appear whole when the part is done, or not at all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack

import pyarrow.parquet as pq

from schemas import POOL_AUDIO, make_table
from schemas.layout import PoolLayout
from stages.audio.packs import PackWriter
from stages.io import storage

# FLAC bytes a source's clips keep in memory before they go to a temporary file.
SPOOL_MEMORY_BYTES = 32 * 2**20
# FLAC bytes of the audio file buffered before they are written as one row group. A part under
# this size is one row group, as pyarrow's write_table makes it.
AUDIO_ROW_GROUP_BYTES = 32 * 2**20


class SourceClips:
    """One source's clips until the source is finished: each clip's row, its FLAC at the pool rate
    and its FLAC at each mix rate."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        self._spans: list[list[tuple[int, int]]] = []  # per clip: pool FLAC, then each mix rate's
        self._rates: list[list[int]] = []

    def add(self, row: dict, flac: bytes, mix_flacs: dict[int, bytes]) -> None:
        spans = []
        for data in (flac, *mix_flacs.values()):
            spans.append((self._spool.tell(), len(data)))
            self._spool.write(data)
        self.rows.append(row)
        self._spans.append(spans)
        self._rates.append(list(mix_flacs))

    def __len__(self) -> int:
        return len(self.rows)

    def clips(self) -> Iterator[tuple[dict, bytes, dict[int, bytes]]]:
        """(row, FLAC, {rate: FLAC}) of each clip, in order, read back one at a time."""
        for row, spans, rates in zip(self.rows, self._spans, self._rates):
            flacs = []
            for offset, size in spans:
                self._spool.seek(offset)
                flacs.append(self._spool.read(size))
            yield row, flacs[0], dict(zip(rates, flacs[1:]))

    def close(self) -> None:
        self._spool.close()


class PartWriter:
    """The part's audio file (`audio/<part>.parquet`: clip_id, flac) and a pack per mix rate
    (`audio/<rate>/<part>.tar`), written clip by clip. Use as a context manager: the files are
    committed when the block ends without an exception, and discarded otherwise."""

    def __init__(self, layout: PoolLayout, part: str, mix_rates: list[int]) -> None:
        self._layout, self._part, self._mix_rates = layout, part, list(mix_rates)
        self._files = ExitStack()
        self._ids: list[str] = []
        self._flacs: list[bytes] = []
        self._buffered = 0
        self._row_groups = 0

    def __enter__(self) -> PartWriter:
        try:
            audio = self._files.enter_context(storage.open_for_writing(self._layout.audio(self._part)))
            self._audio = pq.ParquetWriter(audio, POOL_AUDIO, compression="zstd")
            self._packs = {
                rate: PackWriter(
                    self._files.enter_context(storage.open_for_writing(self._layout.mix_audio(self._part, rate)))
                )
                for rate in self._mix_rates
            }
        except BaseException as exc:
            self._files.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def add(self, clip_id: str, flac: bytes, mix_flacs: dict[int, bytes]) -> None:
        self._ids.append(clip_id)
        self._flacs.append(flac)
        self._buffered += len(flac)
        for rate, pack in self._packs.items():
            pack.add(clip_id, mix_flacs[rate])
        if self._buffered >= AUDIO_ROW_GROUP_BYTES:
            self._flush()

    def ranges(self, rate: int) -> dict[str, tuple[int, int]]:
        """clip_id -> (offset, size) of its FLAC in the pack at `rate`."""
        return self._packs[rate].ranges

    def _flush(self) -> None:
        self._audio.write_table(make_table(POOL_AUDIO, {"clip_id": self._ids, "flac": self._flacs}))
        self._row_groups += 1
        self._ids, self._flacs, self._buffered = [], [], 0

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            try:
                if self._ids or not self._row_groups:
                    self._flush()
                self._audio.close()
                for pack in self._packs.values():
                    pack.close()
            except BaseException as exc:
                self._discard(exc)
                raise
            self._files.close()
        else:
            self._discard(error)

    def _discard(self, error: BaseException) -> None:
        """Ends the writers without committing their files: the part is redone by the next run."""
        try:
            # Closed now, the writer cannot write its footer later, into a file already gone.
            self._audio.close()
        except Exception:
            pass  # a footer that does not fit any more; the file is deleted below either way
        self._files.__exit__(type(error), error, error.__traceback__)
