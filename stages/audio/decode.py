"""Source bytes to float samples: libsndfile first, then FFmpeg through PyAV.

libsndfile reads wav, flac, mp3, ogg and aiff exactly and names them as the pool always has (WAV,
FLAC, ...). Everything it refuses goes to FFmpeg, whose PyAV wheels carry their own libraries:
m4a/AAC, raw AAC (ADTS), Opus and Vorbis in WebM or Ogg, the first audio stream of MP4, MOV, MKV or
WebM video, and whatever else FFmpeg decodes. Those are named CODEC/CONTAINER (AAC/MOV, OPUS/OGG).

Decoding is deterministic, so a file gives the same clip bytes on any node:
- AAC is decoded by FFmpeg's fixed-point decoder (integer arithmetic, no CPU-dependent rounding);
  a stream it cannot decode is decoded again by the float decoder.
- Every FFmpeg decoder runs single-threaded with the bitexact flag.
- Samples are converted to float here from the decoder's own format; FFmpeg's resampler is never
  involved (resampling is soxr's, in stages.audio.standardize).

Audio is decoded in blocks of at most BLOCK_SAMPLES samples (`open_audio`), so a multi-hour source
or a header that claims billions of frames or thousands of channels never makes a whole-file array:
nothing is sized from what a header claims. A header claiming a rate outside MIN_SOURCE_RATE to
MAX_SOURCE_RATE is refused (`bad_sample_rate`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
import soundfile

from stages.errors import BadInput

# Below any real recording's rate (telephone audio is 8 kHz); a header claiming less is damaged.
MIN_SOURCE_RATE = 1000
# Above the fastest ultrasound recorders (about 1 MHz); a header claiming more is damaged, and
# resampling from it would cost seconds per block for a few output samples.
MAX_SOURCE_RATE = 1_536_000
# Samples (frames x channels) of one decoded block: 4 MiB of float32.
BLOCK_SAMPLES = 1 << 20
# libsndfile's MP3 decoder gives slightly different samples (a few float32 ulps) when a file is read
# in several calls, so an MP3 whose header claims up to this many samples (128 MiB of float32, 6
# minutes of 44.1 kHz stereo) is read in one call, exactly as whole-file decoding read it; a longer
# one is read in blocks.
MP3_WHOLE_READ_SAMPLES = 1 << 25

# Full scale of each integer sample format FFmpeg decoders emit (u8 is offset binary).
_INTEGER_FULL_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


class UnreadableAudio(BadInput):
    """The bytes are not audio that this pipeline can decode."""

    kind = "undecodable"


class NoAudioStream(UnreadableAudio):
    """A media file FFmpeg opens that holds streams, but no audio stream (a silent video)."""

    kind = "no_audio_stream"


@dataclass
class DecodedAudio:
    audio: np.ndarray  # [frames, channels], float32
    sample_rate: int
    format: str


@dataclass
class AudioStream:
    """A source being decoded: its rate and format, and its samples as [frames, channels] float32
    blocks. The blocks raise `empty` for audio without samples and `bad_sample_rate` for a rate out
    of bounds before yielding anything."""

    sample_rate: int
    format: str
    blocks: Iterator[np.ndarray]


def decode(data: bytes) -> DecodedAudio:
    """Decode any audio or video file's bytes (its first audio stream) to float32 samples, whole."""
    with open_audio(io.BytesIO(data)) as stream:
        audio = np.concatenate(list(stream.blocks))
    return DecodedAudio(audio, stream.sample_rate, stream.format)


@contextmanager
def open_audio(source: BinaryIO) -> Iterator[AudioStream]:
    """Open a seekable audio or video file (its first audio stream) for decoding in blocks."""
    if not source.read(1):
        raise UnreadableAudio("empty file (0 bytes)", kind="empty")
    source.seek(0)
    handle = None
    try:
        handle = soundfile.SoundFile(source)
        whole = handle.format == "MP3" and 0 < handle.frames * handle.channels <= MP3_WHOLE_READ_SAMPLES
        first = handle.read(handle.frames, dtype="float32", always_2d=True) if whole else _read_libsndfile(handle)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        if handle is not None:
            handle.close()
        # libsndfile names the in-memory buffer first; keep only its reason.
        reason = str(exc).split(": ", 1)[-1]
        if reason.startswith("File does not exist"):
            # What libsndfile says of bytes it cannot place in any format; the bytes are in memory.
            reason = "format not recognised"
        source.seek(0)
        with _open_ffmpeg(source, libsndfile_reason=reason.rstrip(".")) as stream:
            yield stream
        return
    with handle:
        blocks = _libsndfile_blocks(handle, first)
        yield AudioStream(handle.samplerate, handle.format, _checked(blocks, handle.samplerate))


def _checked(blocks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """The blocks, once the audio is known to hold samples at a usable rate."""
    first = next((b for b in blocks if b.shape[0]), None)
    if first is None:
        raise UnreadableAudio("audio has no samples", kind="empty")
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        bound = f"below {MIN_SOURCE_RATE}" if rate < MIN_SOURCE_RATE else f"above {MAX_SOURCE_RATE}"
        raise UnreadableAudio(
            f"sample rate {rate} Hz is {bound} Hz: a damaged header, not audio", kind="bad_sample_rate"
        )
    yield first
    yield from blocks


def _read_libsndfile(handle: soundfile.SoundFile) -> np.ndarray:
    return handle.read(max(1, BLOCK_SAMPLES // handle.channels), dtype="float32", always_2d=True)


def _libsndfile_blocks(handle: soundfile.SoundFile, first: np.ndarray) -> Iterator[np.ndarray]:
    """Blocks until libsndfile reads no more; damage after the first block ends the audio there, as
    libsndfile itself does with a truncated file."""
    block = first
    while block.shape[0]:
        yield block
        try:
            block = _read_libsndfile(handle)
        except (soundfile.LibsndfileError, RuntimeError):
            return


@contextmanager
def _open_ffmpeg(source: BinaryIO, libsndfile_reason: str) -> Iterator[AudioStream]:
    def refuse(ffmpeg_reason: str) -> UnreadableAudio:
        return UnreadableAudio(f"not decodable (libsndfile: {libsndfile_reason}; FFmpeg: {ffmpeg_reason})")

    try:
        container = _open(source)
    except av.FFmpegError as exc:
        raise refuse(_ffmpeg_reason(exc)) from None
    try:
        if not container.streams.audio:
            kinds = sorted({stream.type for stream in container.streams})
            if not kinds:
                raise refuse(f"{container.format.name} container with no streams")
            raise NoAudioStream(
                f"no audio stream (a {container.format.name} file holding only {', '.join(kinds)} streams)"
            )
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        name = f"{codec.upper()}/{container.format.name.split(',')[0].upper()}"
        decoder = _fixed_point_aac(stream) if codec == "aac" else _deterministic(stream.codec_context)
        frames = _stream_blocks(container, stream, decoder)
        try:
            first = next(frames, None)
        except _StreamFailed as failed:
            if codec != "aac":
                raise refuse(str(failed)) from None
            # Profiles the fixed-point decoder lacks go to the float decoder, from the start.
            container.close()
            source.seek(0)
            container = _open(source)
            stream = container.streams.audio[0]
            frames = _stream_blocks(container, stream, _deterministic(stream.codec_context))
            first = next(frames, None)
        rate = first[1] if first is not None else stream.codec_context.sample_rate or 0
        yield AudioStream(rate, name, _checked(_ffmpeg_samples(first, frames, refuse), rate))
    except _StreamFailed as failed:
        raise refuse(str(failed)) from None
    except av.FFmpegError as exc:
        raise refuse(_ffmpeg_reason(exc)) from None
    finally:
        container.close()


def _ffmpeg_samples(first, frames, refuse) -> Iterator[np.ndarray]:
    if first is None:
        return
    yield first[0]
    try:
        for block, _ in frames:
            yield block
    except _StreamFailed as failed:
        raise refuse(str(failed)) from None


def _open(source: BinaryIO) -> av.container.InputContainer:
    return av.open(source, mode="r", metadata_errors="ignore")


class _StreamFailed(Exception):
    """A stream that cannot be decoded: it failed before its first frame, or its rate or channel
    count changes midway."""


def _fixed_point_aac(stream: av.audio.stream.AudioStream) -> av.CodecContext:
    decoder = av.CodecContext.create("aac_fixed", "r")
    if stream.codec_context.extradata:
        decoder.extradata = stream.codec_context.extradata
    decoder.sample_rate = stream.codec_context.sample_rate
    decoder.layout = stream.codec_context.layout
    return _deterministic(decoder)


def _deterministic(decoder: av.CodecContext) -> av.CodecContext:
    decoder.thread_count = 1
    decoder.flags |= av.codec.context.Flags.bitexact
    return decoder


def _stream_blocks(container, stream, decoder: av.CodecContext) -> Iterator[tuple[np.ndarray, int]]:
    """The frames of one stream as ([frames, channels] float32 blocks of about BLOCK_SAMPLES, rate).
    Damage after the first decoded frame ends the audio there, as libsndfile does with a truncated
    file."""
    pending: list[np.ndarray] = []
    held = 0
    rate = channels = None
    try:
        for packet in container.demux(stream):
            for frame in decoder.decode(packet):
                if rate is None:
                    rate, channels = frame.sample_rate, frame.layout.nb_channels
                elif (frame.sample_rate, frame.layout.nb_channels) != (rate, channels):
                    raise _StreamFailed(
                        f"the stream changes from {rate} Hz, {channels} channels to {frame.sample_rate} Hz, "
                        f"{frame.layout.nb_channels} channels midway"
                    )
                samples = _frame_samples(frame)
                pending.append(samples)
                held += samples.size
                if held >= BLOCK_SAMPLES:
                    yield np.concatenate(pending), rate
                    pending, held = [], 0
    except av.FFmpegError as exc:
        if rate is None:
            raise _StreamFailed(_ffmpeg_reason(exc)) from None
    if pending:
        yield np.concatenate(pending), rate


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """One frame as [samples, channels] float32 in [-1, 1], from any sample format."""
    channels = frame.layout.nb_channels
    array = frame.to_ndarray()
    # Planar frames come as [channels, samples]; packed ones as [1, samples * channels].
    samples = array.T if frame.format.is_planar else array.reshape(-1, channels)
    base = frame.format.name.rstrip("p")
    if base == "u8":
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if base in _INTEGER_FULL_SCALE:
        return (samples.astype(np.float64) / _INTEGER_FULL_SCALE[base]).astype(np.float32)
    return samples.astype(np.float32)


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    # PyAV appends the file name, which is '<none>' for bytes in memory.
    return (exc.strerror or str(exc)).rstrip(".")
