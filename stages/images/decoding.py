"""Input images: listing (files, WebDataset tars, Parquet of URIs), stable ids, decoding, validation.

A listed image is a reference (URI, plus the member name inside a tar). Decoding applies the EXIF
orientation, converts any mode (CMYK, 16-bit, paletted, alpha) to RGB, and refuses images whose
pixel count exceeds the decompression-bomb guard. Failures are error rows naming the image, with
their kind (empty, too_large, undecodable, unsupported, unreadable, not_a_file; bad_container for a
Parquet list's row without a usable uri).

How awkward inputs are handled (tests/test_images.py):
- 0 bytes, bytes that are no image, a truncated file: an error row ("<uri>: empty file (0 bytes)",
  "<uri>: not a decodable image (<Pillow's reason>)").
- More pixels than sonify.max_image_pixels, read from the header before any pixel is decoded: an
  error row ("... over the decompression-bomb limit ..."). Pillow refuses on its own anything over
  2 x Image.MAX_IMAGE_PIXELS (178,956,970 by default), whatever the configured limit; that too is
  reported as over the decompression-bomb limit.
- EXIF orientation is applied, so width and height are those of the upright image; a corrupt EXIF
  block is ignored.
- Alpha is composited on white; 16-bit greyscale keeps its top 8 bits; CMYK and palettes become RGB.
- The same id from two inputs (two folders, two tars, a Parquet list): both are kept, under hashes
  of their URIs; the same reference listed twice gets two distinct ids.
"""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from stages.errors import BadInput
from stages.images.listing import ImageRef
from stages.io import storage

# A hard cap, far above any real photo (SA-1B images are about 2M pixels).
DEFAULT_MAX_IMAGE_PIXELS = 200_000_000


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, upright
    width: int
    height: int
    format: str


class BadImage(BadInput):
    """Bytes that are not a usable image."""

    kind = "undecodable"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedImage:
    if not data:
        raise BadImage("empty file (0 bytes)", kind="empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns above half its own limit; the guard below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                fmt = (probe.format or "unknown").lower()
            if width * height > max_pixels:
                raise BadImage(
                    f"{width}x{height} pixels is over the decompression-bomb limit of {max_pixels}", kind="too_large"
                )
            image = Image.open(io.BytesIO(data))
            image.load()
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"over the decompression-bomb limit ({exc})", kind="too_large") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # PIL names the in-memory buffer, which means nothing to the user; keep the reason only.
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
        raise BadImage(f"not a decodable image ({reason})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        backdrop = Image.new("RGB", image.size, (255, 255, 255))
        backdrop.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = backdrop
    elif image.mode.startswith("I"):
        # 16-bit greyscale: keep the top 8 bits rather than clipping everything above 255.
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    else:
        image = image.convert("RGB")
    return DecodedImage(image, image.width, image.height, fmt)


def read_image_bytes(refs: list[ImageRef]) -> list[bytes | BadInput]:
    """Bytes of each reference, or why they cannot be read; each tar is read once for all its members."""
    results: list[bytes | BadInput] = [b""] * len(refs)
    by_tar: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        if ref.member:
            by_tar.setdefault(ref.uri, []).append(i)
            continue
        try:
            results[i] = storage.read_bytes(ref.uri)
        except Exception as exc:  # any failure to read a URL is that image's error
            results[i] = BadInput(f"cannot read ({type(exc).__name__}: {exc})", kind="unreadable")
    for uri, positions in by_tar.items():
        wanted = {refs[i].member: i for i in positions}
        try:
            fs, path = storage.filesystem(uri)
            with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
                for member in tar:
                    name = storage.utf8_name(member.name)  # as listed
                    if name in wanted:
                        results[wanted.pop(name)] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as exc:
            for i in wanted.values():
                results[i] = BadInput(f"unreadable tar ({exc})", kind="unreadable")
            continue
        for name, i in wanted.items():
            results[i] = BadInput("member not found", kind="unreadable")
    return results


def downscale(image: Image.Image, max_pixels: int) -> Image.Image:
    """Bound the pixel count (and so the VLM's vision tokens), keeping the aspect ratio."""
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = (max_pixels / pixels) ** 0.5
    return image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.Resampling.BICUBIC)


# Pillow's encoder name of each re-encoding sonify.image_format, which is also the member extension.
ENCODERS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


@dataclass(frozen=True)
class ImageEncoding:
    """How shards carry images: `format` is jpg, webp or png (re-encoded once) or original (the
    source bytes); `quality` applies to jpg and webp; `max_side` bounds the longer side;
    `max_pixels` is the decompression-bomb guard the images stage applied."""

    format: str = "jpg"
    quality: int = 95
    max_side: int | None = None
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ShardImage:
    extension: str
    data: bytes
    width: int
    height: int


def format_extension(decoded_format: str) -> str:
    """The member extension of a format as Pillow names it (lower case): JPEG and its multi-picture
    variant MPO, which cameras write, are jpg, the spelling every WebDataset reader knows."""
    return "jpg" if decoded_format in ("jpeg", "mpo") else decoded_format


def bound_side(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so that the longer side is at most max_side, keeping the aspect ratio; never upscale."""
    longer = max(image.width, image.height)
    if longer <= max_side:
        return image
    scale = max_side / longer
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def shard_image(data: bytes, decoded_format: str, upright_size: tuple[int, int], encoding: ImageEncoding) -> ShardImage:
    """The image a shard carries. Re-encoding formats decode the source (upright, RGB, as the VLM saw
    it), bound its side and encode it once, so every sample of a dataset has the same member name.
    `original` keeps the bytes and takes the extension from the format the images stage decoded,
    never from the URI, whose name may carry a query string or lie about its content; its size is
    the upright size that stage measured. Raises BadImage."""
    if encoding.format == "original":
        return ShardImage(format_extension(decoded_format), data, *upright_size)
    image = decode_image(data, encoding.max_pixels).image
    if encoding.max_side:
        image = bound_side(image, encoding.max_side)
    buffer = io.BytesIO()
    options = {} if encoding.format == "png" else {"quality": encoding.quality}
    image.save(buffer, format=ENCODERS[encoding.format], **options)
    return ShardImage(encoding.format, buffer.getvalue(), image.width, image.height)


def vlm_jpeg(data: bytes, max_pixels: int) -> bytes:
    """What a remote or engine VLM receives: the decoded, upright RGB image, downscaled to the pixel
    cap, as JPEG."""
    buffer = io.BytesIO()
    downscale(decode_image(data).image, max_pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
