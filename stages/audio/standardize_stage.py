"""Standardize source audio into pool clips: decode, down-mix, resample, chunk, measure, store.

The algorithms are plain functions on numpy arrays. `Standardize` is the stage: it takes one part
(a group of sources: files, Parquet rows, tar members), writes the part's clip audio to
`pool.dir/audio/<part>.parquet` and, resampled to each mix rate, to a pack per rate
(`pool.dir/audio/<rate>/<part>.tar`), and returns one metadata row per clip, which locates the clip
in each pack.

A source is read, decoded, resampled and cut in blocks, and each clip is measured and encoded as
it is cut (stages.audio.decode, standardize.ClipCutter, part_writer), so a worker's memory does not
grow with a source's length: a source over SOURCE_IN_MEMORY_BYTES is read twice from its file (once
for its hash, once to decode it) rather than held. A source that cannot be used becomes one row
with `error` set to "<uri>: <reason>" and `error_kind` to the kind the error was raised with
(stages.errors). Decoding (libsndfile, then FFmpeg) is stages.audio.decode.

How awkward sources are handled (tests/test_standardize.py, tests/test_decode.py and
tests/test_bad_input.py):
- 0 bytes, a valid header with no samples, or a Parquet row without bytes: an `empty` error row.
- Bytes neither libsndfile nor FFmpeg can decode (text, a cut FLAC stream, a header fragment):
  `undecodable`.
- A video (or other media file) without an audio stream: `no_audio_stream`.
- A Parquet file or tar that cannot be used as listed (no such audio column, repeated ids or
  member names): `bad_container`.
- A header claiming under decode.MIN_SOURCE_RATE Hz or over decode.MAX_SOURCE_RATE Hz:
  `bad_sample_rate`.
- A header claiming far more frames or channels than the file holds: decoded up to what it holds,
  in blocks; nothing is sized from the claim.
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
- Anything else that fails while standardizing one file: a `failed` error row for that file only,
  with none of its clips.
- A generated source (pipelines/generate.py) is standardized like a recording; its provenance
  (model, prompt, seed, steps, guidance) comes with the part and goes to every row of it.
- No space left where the part's files or a source's spool are written: the run stops
  (storage.DiskFull), as no other file could be written either.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from contextlib import closing
from typing import BinaryIO, ClassVar

import numpy as np
import pyarrow as pa

from schemas import POOL_PARTS, STANDARDIZED_CLIPS, make_table
from schemas.layout import PoolLayout
from schemas.pool_config import VariantConfig
from stages.audio import loudness
from stages.audio.decode import AudioStream, UnreadableAudio, open_audio
from stages.audio.packs import PCM16_SCALE, encode_flac, locate_in_pack, quantize_pcm16
from stages.audio.part_writer import PartWriter, SourceClips
from stages.audio.standardize import ClipCutter, clip_id, error_clip_id, resample, source_id, variant_clip_id
from stages.audio.variants import Chain, load_chain, variants_for
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.io import storage
from stages.io.source_reader import SourceReader
from stages.io.sources import Member

DECODE_MEMORY_BYTES = 512 * 1024**2
# A source up to this size is read once, into memory; a larger one is read twice from its file.
SOURCE_IN_MEMORY_BYTES = 64 * 2**20
HASH_READ_BYTES = 4 * 2**20


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
        variants: list[VariantConfig] | None = None,
    ) -> None:
        self.pool_dir = pool_dir
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.silence_lufs = silence_lufs
        self.mix_sample_rates = list(mix_sample_rates)
        self.variants = list(variants or [])
        self._chains: dict[str, Chain] | None = None

    def setup(self) -> None:
        self._chains = {v.name: load_chain(v) for v in self.variants}

    def chains_for(self, uri: str) -> list[Chain]:
        """The loaded chains of the variants that apply to a source."""
        if self._chains is None:
            self.setup()
        return [self._chains[v.name] for v in variants_for(uri, self.variants)]

    def resources(self) -> Resources:
        # Decoding holds a block of a source, a clip's audio at each rate and up to a row group of
        # FLAC. The reservation also keeps Ray from fusing this CPU stage into the embedding actors,
        # so decoding scales out on its own.
        return Resources(num_cpus=1, memory_bytes=DECODE_MEMORY_BYTES, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return STANDARDIZED_CLIPS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        tables = [self.process_part(row) for row in batch.to_pylist()]
        return pa.concat_tables(tables) if tables else STANDARDIZED_CLIPS.empty_table()

    def process_part(self, part: dict) -> pa.Table:
        rows: dict[str, list] = {f.name: [] for f in STANDARDIZED_CLIPS}
        fingerprints = part["fingerprints"] or [None] * len(part["uris"])
        errors = part["errors"] or [None] * len(part["uris"])
        error_kinds = part.get("error_kinds") or [None] * len(part["uris"])
        # A part of plain files has no members (null, or absent from a hand-built part).
        members = [Member(**m) if m else None for m in part.get("members") or [None] * len(part["uris"])]
        generations = part.get("generations") or [None] * len(part["uris"])
        reader = SourceReader()
        with PartWriter(PoolLayout(self.pool_dir), part["part"], self.mix_sample_rates) as writer:
            for uri, fingerprint, listing_error, listing_kind, member, generation in zip(
                part["uris"], fingerprints, errors, error_kinds, members, generations
            ):
                listed = BadInput(listing_error, listing_kind) if listing_error else None
                for row in self._standardize_file(writer, part["part"], uri, fingerprint, listed, reader, member):
                    # A generated source's provenance goes to every row of it, its error row included.
                    row["generation"] = generation
                    for name, values in rows.items():
                        values.append(row.get(name))
        for rate in self.mix_sample_rates:
            locate_in_pack(rows["clip_id"], rows["loudness_at_rates"], rate, writer.ranges(rate))
        rows["part_rows"] = [len(rows["clip_id"])] * len(rows["clip_id"])
        return make_table(STANDARDIZED_CLIPS, rows)

    def _standardize_file(
        self,
        writer: PartWriter,
        part: str,
        uri: str,
        fingerprint: str | None,
        listing_error: BadInput | None,
        reader: SourceReader,
        member: Member | None,
    ) -> list[dict]:
        """The rows of one source: its clips, added to the part's files, or one error row."""

        def fail(error: BadInput) -> list[dict]:
            return [
                dict(
                    clip_id=error_clip_id(uri),
                    source_id=error_clip_id(uri).removesuffix("-error"),
                    source_uri=uri,
                    source_fingerprint=fingerprint,
                    chunk_index=-1,
                    part=part,
                    error=error_text(uri, str(error)),
                    error_kind=error.kind,
                )
            ]

        if listing_error:
            return fail(listing_error)
        clips = SourceClips()
        decoding = False
        try:
            with reader.open(uri, member) as handle:
                source, sha = _hashed(handle)
                decoding = True
                with open_audio(source) as stream:
                    self._clips(clips, uri, fingerprint, part, sha, stream)
        except BadInput as exc:
            clips.close()
            return fail(exc)
        except Exception as exc:  # one file's failure must not lose the other files of its part
            clips.close()
            if isinstance(exc, storage.DiskFull):
                raise
            full = storage.disk_full(exc, tempfile.gettempdir())
            if full is not None:  # the spool of a long source: no other source could be spooled either
                raise full from None
            if not decoding:
                return fail(BadInput(f"cannot read: {type(exc).__name__}: {exc}", kind="unreadable"))
            return fail(BadInput(f"standardizing failed ({type(exc).__name__}: {exc})", kind="failed"))
        with closing(clips):
            for row, flac, mix_flacs in clips.clips():
                writer.add(row["clip_id"], flac, mix_flacs)
        return clips.rows

    def _clips(
        self, out: SourceClips, uri: str, fingerprint: str | None, part: str, sha: str, stream: AudioStream
    ) -> None:
        """Every clip of a source, as it is cut: its row, its FLAC at the pool rate and at each mix rate."""
        source = source_id(uri, sha)
        cutter = ClipCutter(stream.sample_rate, self.sample_rate, self.clip_seconds)
        described = dict(source_id=source, source_uri=uri, source_fingerprint=fingerprint, source_sha256=sha)
        described.update(source_format=stream.format, source_sample_rate=stream.sample_rate, part=part)
        chains = self.chains_for(uri)
        index = 0
        for clip, real in _cut(stream, cutter):
            parent = self._clip(out, described, index, clip, real)
            # Each variant is made from the stored 16-bit clip, the audio its parent's listeners hear.
            stored = quantize_pcm16(clip).astype(np.float32) / PCM16_SCALE
            for chain in chains:
                varied = dict(
                    described,
                    clip_id=variant_clip_id(parent, chain.name),
                    parent_clip_id=parent,
                    variant=chain.name,
                    variant_chain=chain.description,
                )
                self._clip(out, varied, index, chain(stored, self.sample_rate), real)
            index += 1
        if cutter.samples_out == 0:
            raise UnreadableAudio(
                f"audio is too short to keep ({cutter.frames_in} samples at {stream.sample_rate} Hz "
                f"leave none at {self.sample_rate} Hz)",
                kind="empty",
            )
        # Known once the whole source is decoded; the same for every clip of it.
        for row in out.rows:
            row.update(source_channels=cutter.channels, source_duration_s=cutter.frames_in / stream.sample_rate)

    def _clip(self, out: SourceClips, described: dict, index: int, clip: np.ndarray, real: int) -> str:
        """Measures and encodes one clip, adds it to the source's clips and returns its id (a cut
        clip's is made from the source and index; a variant's comes in `described`)."""
        pcm = quantize_pcm16(clip)
        stored = pcm.astype(np.float32) / PCM16_SCALE
        lufs = loudness.integrated_lufs(stored, self.sample_rate)
        at_rates, at_rate_flacs = [], {}
        for rate in self.mix_sample_rates:
            # Measured on the 16-bit audio the pack stores, which is exactly what a mix decodes, so
            # a gain set from this loudness lands on the audio mixed. Where the clip sits in the
            # pack is known once the whole pack is written.
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
        row = dict(
            {"clip_id": clip_id(described["source_id"], index)},
            **described,
            chunk_index=index,
            start_s=index * self.clip_seconds,
            duration_s=real / self.sample_rate,
            sample_rate=self.sample_rate,
            lufs=lufs,
            peak_dbfs=loudness.peak_dbfs(stored),
            loudness_at_rates=at_rates,
            silent=loudness.is_silent(lufs, self.silence_lufs),
        )
        out.add(row, encode_flac(pcm, self.sample_rate), at_rate_flacs)
        return row["clip_id"]


def _cut(stream: AudioStream, cutter: ClipCutter):
    """(clip, real samples) of a source, cut block by block as it is decoded."""
    for block in stream.blocks:
        yield from cutter.feed(block)
    yield from cutter.finish()


def _hashed(handle: BinaryIO) -> tuple[BinaryIO, str]:
    """The source to decode and the SHA-256 of its bytes: a small source read once into memory, a
    large one hashed as it is read through, then decoded from its file."""
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    if size <= SOURCE_IN_MEMORY_BYTES:
        data = handle.read()
        return io.BytesIO(data), hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    while block := handle.read(HASH_READ_BYTES):
        digest.update(block)
    handle.seek(0)
    return handle, digest.hexdigest()
