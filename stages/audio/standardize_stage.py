"""Standardize source audio into pool clips: decode, down-mix, resample, chunk, measure, store.

The algorithms are plain functions on numpy arrays. `Standardize` is the stage: it takes one part
(a group of sources: files, Parquet rows, tar members), writes the part's clip audio to
`pool.dir/audio/<part>.parquet` and, resampled to each mix rate, to a pack per rate
(`pool.dir/audio/<rate>/<part>.tar`), and returns one metadata row per clip, which locates the clip
in each pack. A source that cannot be used becomes one row with `error` set to "<uri>: <reason>"
and `error_kind` to the kind the error was raised with (stages.errors). Decoding (libsndfile, then
FFmpeg) is stages.audio.decode.

How awkward sources are handled (tests/test_standardize.py, tests/test_decode.py and
tests/test_bad_input.py):
- 0 bytes, a valid header with no samples, or a Parquet row without bytes: an `empty` error row.
- Bytes neither libsndfile nor FFmpeg can decode (text, a cut FLAC stream, a header fragment):
  `undecodable`.
- A video (or other media file) without an audio stream: `no_audio_stream`.
- A Parquet file or tar that cannot be used as listed (no such audio column, repeated ids or
  member names): `bad_container`.
- A header claiming under decode.MIN_SOURCE_RATE Hz: `bad_sample_rate` (a damaged header would otherwise
  be upsampled into gigabytes).
- A truncated wav, mp3 or ogg: decoded up to the cut, like any shorter file.
- Shorter than one clip, or than pyloudnorm's 0.4 s block: one zero-padded clip. Its loudness is
  measured over the padded clip, so a sound shorter than a 0.4 s block reads quieter than its own
  level, exactly as the mixer will later measure it.
- NaN or inf samples (a broken encoder): set to zero before anything is measured; a file of
  nothing else gives silent clips.
- Float samples beyond full scale: saturated at 16-bit full scale, as the pool stores PCM16.
- Any channel count is averaged to mono; any rate is resampled.
- A URL that cannot be opened or read: `unreadable`; a folder given where a file is expected:
  `not_a_file` (both found when sources are listed, stages.io.sources).
- Anything else that fails while standardizing one file: a `failed` error row for that file only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas import POOL_AUDIO, POOL_PARTS, STANDARDIZED_CLIPS, make_table
from schemas.layout import PoolLayout
from stages.audio import loudness
from stages.audio.decode import DecodedAudio, UnreadableAudio, decode
from stages.audio.packs import PCM16_SCALE, encode_flac, locate_in_pack, pack_clips, quantize_pcm16
from stages.audio.standardize import chunk, clip_id, error_clip_id, resample, source_id, to_mono
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.io import storage
from stages.io.sources import Member, SourceReader

DECODE_MEMORY_BYTES = 512 * 1024**2


@dataclass
class PartOutput:
    rows: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in STANDARDIZED_CLIPS})
    audio_ids: list[str] = field(default_factory=list)
    audio_flac: list[bytes] = field(default_factory=list)
    # Per mix rate, the FLAC of each clip of audio_ids: its pack is written once the part is done.
    mix_flac: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))

    def add(self, **row) -> None:
        for name, values in self.rows.items():
            values.append(row.get(name))


class Standardize(Stage):
    name: ClassVar[str] = "standardize"
    required_columns: ClassVar[tuple[str, ...]] = tuple(POOL_PARTS.names)

    def __init__(
        self,
        pool_dir: str,
        sample_rate: int,
        clip_seconds: float,
        silence_lufs: float,
        mix_sample_rates: list[int],
    ) -> None:
        self.pool_dir = pool_dir
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.silence_lufs = silence_lufs
        self.mix_sample_rates = list(mix_sample_rates)

    def resources(self) -> Resources:
        # Decoding holds a whole source file in memory. The reservation also keeps Ray from fusing
        # this CPU stage into the embedding actors, so decoding scales out on its own.
        return Resources(num_cpus=1, memory_bytes=DECODE_MEMORY_BYTES, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return STANDARDIZED_CLIPS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        tables = [self.process_part(row) for row in batch.to_pylist()]
        return pa.concat_tables(tables) if tables else STANDARDIZED_CLIPS.empty_table()

    def process_part(self, part: dict) -> pa.Table:
        out = PartOutput()
        fingerprints = part["fingerprints"] or [None] * len(part["uris"])
        errors = part["errors"] or [None] * len(part["uris"])
        error_kinds = part.get("error_kinds") or [None] * len(part["uris"])
        # A part of plain files has no members (null, or absent from a hand-built part).
        members = [Member(**m) if m else None for m in part.get("members") or [None] * len(part["uris"])]
        reader = SourceReader()
        for uri, fingerprint, listing_error, listing_kind, member in zip(
            part["uris"], fingerprints, errors, error_kinds, members
        ):
            listed = BadInput(listing_error, listing_kind) if listing_error else None
            self._standardize_file(out, part["part"], uri, fingerprint, listed, reader, member)
        layout = PoolLayout(self.pool_dir)
        storage.write_parquet(
            layout.audio(part["part"]), make_table(POOL_AUDIO, {"clip_id": out.audio_ids, "flac": out.audio_flac})
        )
        for rate in self.mix_sample_rates:
            pack, ranges = pack_clips(list(zip(out.audio_ids, out.mix_flac[rate])))
            storage.write_bytes(layout.mix_audio(part["part"], rate), pack)
            locate_in_pack(out.rows["clip_id"], out.rows["loudness_at_rates"], rate, ranges)
        out.rows["part_rows"] = [len(out.rows["clip_id"])] * len(out.rows["clip_id"])
        return make_table(STANDARDIZED_CLIPS, out.rows)

    def _standardize_file(
        self,
        out: PartOutput,
        part: str,
        uri: str,
        fingerprint: str | None,
        listing_error: BadInput | None,
        reader: SourceReader,
        member: Member | None,
    ) -> None:
        def fail(error: BadInput) -> None:
            out.add(
                clip_id=error_clip_id(uri),
                source_id=error_clip_id(uri).removesuffix("-error"),
                source_uri=uri,
                source_fingerprint=fingerprint,
                chunk_index=-1,
                part=part,
                error=error_text(uri, str(error)),
                error_kind=error.kind,
            )

        if listing_error:
            fail(listing_error)
            return
        try:
            data = reader.read(uri, member)
        except BadInput as exc:
            fail(exc)
            return
        except Exception as exc:  # any failure to read a URL is that file's error row
            fail(BadInput(f"cannot read: {type(exc).__name__}: {exc}", kind="unreadable"))
            return
        try:
            rows, flacs, mix_flacs = self._clips(uri, fingerprint, part, data, decode(data))
        except BadInput as exc:
            fail(exc)
            return
        except Exception as exc:  # one file's failure must not lose the other files of its part
            fail(BadInput(f"standardizing failed ({type(exc).__name__}: {exc})", kind="failed"))
            return
        for row, flac, at_rates in zip(rows, flacs, mix_flacs):
            out.add(**row)
            out.audio_ids.append(row["clip_id"])
            out.audio_flac.append(flac)
            for rate, mix_flac in at_rates.items():
                out.mix_flac[rate].append(mix_flac)

    def _clips(
        self, uri: str, fingerprint: str | None, part: str, data: bytes, decoded: DecodedAudio
    ) -> tuple[list[dict], list[bytes], list[dict[int, bytes]]]:
        """The rows of a source's clips, their FLAC at the pool rate, and their FLAC at each mix rate."""
        sha = hashlib.sha256(data).hexdigest()
        source = source_id(uri, sha)
        # Non-finite samples (a broken encoder) would poison every measurement: they become silence.
        mono = np.nan_to_num(to_mono(decoded.audio), nan=0.0, posinf=0.0, neginf=0.0)
        standardized = resample(mono, decoded.sample_rate, self.sample_rate)
        if standardized.size == 0:
            raise UnreadableAudio(
                f"audio is too short to keep ({decoded.audio.shape[0]} samples at {decoded.sample_rate} Hz "
                f"leave none at {self.sample_rate} Hz)",
                kind="empty",
            )
        clips, real_samples = chunk(standardized, self.sample_rate, self.clip_seconds)
        rows, flacs, mix_flacs = [], [], []
        for index, (clip, real) in enumerate(zip(clips, real_samples)):
            pcm = quantize_pcm16(clip)
            stored = pcm.astype(np.float32) / PCM16_SCALE
            lufs = loudness.integrated_lufs(stored, self.sample_rate)
            at_rates, at_rate_flacs = [], {}
            for rate in self.mix_sample_rates:
                # Measured on the 16-bit audio the pack stores, which is exactly what a mix decodes,
                # so a gain set from this loudness lands on the audio mixed. Where the clip sits in
                # the pack is known once the whole pack is written.
                pcm_at_rate = quantize_pcm16(resample(stored, self.sample_rate, rate))
                heard = pcm_at_rate.astype(np.float32) / PCM16_SCALE
                at_rates.append(
                    {
                        "sample_rate": rate,
                        "lufs": loudness.integrated_lufs(heard, rate),
                        "peak_dbfs": loudness.peak_dbfs(heard),
                        "audio_offset": None,
                        "audio_bytes": None,
                    }
                )
                at_rate_flacs[rate] = encode_flac(pcm_at_rate, rate)
            rows.append(
                dict(
                    clip_id=clip_id(source, index),
                    source_id=source,
                    source_uri=uri,
                    source_fingerprint=fingerprint,
                    source_sha256=sha,
                    source_format=decoded.format,
                    source_sample_rate=decoded.sample_rate,
                    source_channels=decoded.audio.shape[1],
                    source_duration_s=decoded.audio.shape[0] / decoded.sample_rate,
                    chunk_index=index,
                    start_s=index * self.clip_seconds,
                    duration_s=real / self.sample_rate,
                    sample_rate=self.sample_rate,
                    lufs=lufs,
                    peak_dbfs=loudness.peak_dbfs(stored),
                    loudness_at_rates=at_rates,
                    silent=loudness.is_silent(lufs, self.silence_lufs),
                    part=part,
                )
            )
            flacs.append(encode_flac(pcm, self.sample_rate))
            mix_flacs.append(at_rate_flacs)
        return rows, flacs, mix_flacs
