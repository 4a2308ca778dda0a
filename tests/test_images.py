"""Listing, ids and decoding of input images, on generated files of every awkward kind."""

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.images import BadImage, ImageRef, assign_image_ids, decode_image, list_images, read_image_bytes, sample_key


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width=64, height=48, mode="RGB") -> Image.Image:
    array = (np.linspace(0, 255, width * height * 3).reshape(height, width, 3)).astype(np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("L", "WEBP"), ("RGB", "WEBP")],
)
def test_decode_modes_to_rgb(mode, fmt):
    decoded = decode_image(encode(gradient(mode=mode), fmt))
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.format == fmt.lower()


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(encode(image, "PNG")).image.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_greyscale_keeps_its_range():
    array = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    decoded = decode_image(encode(Image.fromarray(array), "PNG")).image
    values = np.asarray(decoded)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_exif_rotation_is_applied():
    image = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (48, 64)


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), (b"GIF89a not really", "not a decodable image"), (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "not a decodable image")],
)
def test_bad_bytes(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_an_error():
    data = encode(gradient(256, 256), "JPEG")
    with pytest.raises(BadImage):
        decode_image(data[: len(data) // 3])


def test_decompression_bomb_guard():
    with pytest.raises(BadImage, match="decompression-bomb"):
        decode_image(encode(Image.new("L", (4000, 3000)), "PNG"), max_pixels=10_000_000)


def test_listing_files_tars_and_parquet(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(gradient(), "JPEG"))
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "sub dir" / "b é.png").write_bytes(encode(gradient(), "PNG"))
    (tmp_path / "notes.txt").write_text("hello")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for key in ("s1", "s2"):
            for ext, payload in (("jpg", encode(gradient(), "JPEG")), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    pq.write_table(pa.table({"uri": [str(tmp_path / "a.jpg")], "image_id": ["from-parquet"]}), tmp_path / "list.parquet")
    pq.write_table(pa.table({"path": ["x"]}), tmp_path / "nouri.parquet")
    refs = list_images([str(tmp_path / "*"), str(tmp_path / "sub dir" / "*"), str(tmp_path / "gone.jpg")])
    by_id = {r.own_id: r for r in refs}
    assert {"a", "b é", "s1", "s2", "from-parquet"} <= set(by_id)
    assert by_id["s1"].member == "s1.jpg"
    errors = {r.own_id: r.error for r in refs if r.error}
    assert "unsupported input" in errors["notes"]
    assert "no 'uri' column" in errors["nouri"]
    assert "cannot read" in errors["gone"]
    data = read_image_bytes([by_id["s2"], by_id["a"], ImageRef(str(tmp_path / "shard.tar"), "s9.jpg", "s9")])
    assert decode_image(data[0]).width == 64 and decode_image(data[1]).width == 64
    assert "member not found" in data[2]


def test_ids_are_own_ids_unless_they_collide():
    refs = [ImageRef("/x/a.jpg", None, "a"), ImageRef("/y/a.jpg", None, "a"), ImageRef("/y/b.jpg", None, "b")]
    ids = assign_image_ids(refs)
    assert ids[2] == "b"
    assert ids[0] != ids[1] and len(ids[0]) == 16
    assert assign_image_ids(refs) == ids


def test_sample_key():
    assert sample_key("dir/abc.seg.jpg") == "dir/abc"
    assert sample_key("abc.jpg") == "abc"
