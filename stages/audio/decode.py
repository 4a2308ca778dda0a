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
  involved (resampling is soxr's, in stages.audio.standardize_stage).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import soundfile

from stages.errors import BadInput

# Below any real recording's rate (telephone audio is 8 kHz); a header claiming less is damaged.
MIN_SOURCE_RATE = 1000

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


def decode(data: bytes) -> DecodedAudio:
    """Decode any audio or video file's bytes (its first audio stream) to float32 samples."""
    if not data:
        raise UnreadableAudio("empty file (0 bytes)", kind="empty")
    try:
        decoded = _decode_libsndfile(data)
    except _LibsndfileRefused as refused:
        decoded = _decode_ffmpeg(data, libsndfile_reason=str(refused))
    if decoded.audio.shape[0] == 0:
        raise UnreadableAudio("audio has no samples", kind="empty")
    if decoded.sample_rate < MIN_SOURCE_RATE:
        raise UnreadableAudio(
            f"sample rate {decoded.sample_rate} Hz is below {MIN_SOURCE_RATE} Hz: a damaged header, not audio",
            kind="bad_sample_rate",
        )
    return decoded


class _LibsndfileRefused(Exception):
    """libsndfile cannot read the bytes; FFmpeg gets its turn."""


def _decode_libsndfile(data: bytes) -> DecodedAudio:
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            audio = handle.read(dtype="float32", always_2d=True)
            return DecodedAudio(audio, handle.samplerate, handle.format)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile names the in-memory buffer first; keep only its reason.
        reason = str(exc).split(": ", 1)[-1]
        if reason.startswith("File does not exist"):
            # What libsndfile says of bytes it cannot place in any format; the bytes are in memory.
            reason = "format not recognised"
        raise _LibsndfileRefused(reason.rstrip(".")) from None


def _decode_ffmpeg(data: bytes, libsndfile_reason: str) -> DecodedAudio:
    def refuse(ffmpeg_reason: str) -> UnreadableAudio:
        return UnreadableAudio(f"not decodable (libsndfile: {libsndfile_reason}; FFmpeg: {ffmpeg_reason})")

    try:
        with _open(data) as container:
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
            if codec == "aac":
                try:
                    return DecodedAudio(*_decode_stream(container, stream, _fixed_point_aac(stream)), name)
                except _StreamFailed:
                    pass  # profiles the fixed-point decoder lacks go to the float decoder, from the start
        with _open(data) as container:
            stream = container.streams.audio[0]
            return DecodedAudio(*_decode_stream(container, stream, _deterministic(stream.codec_context)), name)
    except av.FFmpegError as exc:
        raise refuse(_ffmpeg_reason(exc)) from None
    except _StreamFailed as failed:
        raise refuse(str(failed)) from None


def _open(data: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")


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


def _decode_stream(container, stream, decoder: av.CodecContext) -> tuple[np.ndarray, int]:
    """All frames of one stream as [frames, channels] float32 and their rate. Damage after the
    first decoded frame ends the audio there, as libsndfile does with a truncated file."""
    blocks: list[np.ndarray] = []
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
                blocks.append(_frame_samples(frame))
    except av.FFmpegError as exc:
        if not blocks:
            raise _StreamFailed(_ffmpeg_reason(exc)) from None
    if rate is None:
        return np.zeros((0, 1), np.float32), stream.codec_context.sample_rate or 0
    return np.concatenate(blocks), rate


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
