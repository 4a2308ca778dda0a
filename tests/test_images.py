"""Listing, ids and decoding of input images, on generated files of every awkward kind."""

import io
import tarfile
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas import IMAGE_REFS, make_table
from stages.images.decode_stage import DecodeImages
from stages.images.decoding import BadImage, decode_image, read_image_bytes
from stages.images.listing import ImageRef, assign_image_ids, list_images, tar_member_key
from tests.helpers import png


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
    [
        (b"", "empty file"),
        (b"GIF89a not really", "not a decodable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "not a decodable image"),
    ],
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
    pq.write_table(
        pa.table({"uri": [str(tmp_path / "a.jpg")], "image_id": ["from-parquet"]}), tmp_path / "list.parquet"
    )
    pq.write_table(pa.table({"path": ["x"]}), tmp_path / "nouri.parquet")
    refs = list_images([str(tmp_path / "*"), str(tmp_path / "sub dir" / "*"), str(tmp_path / "gone.jpg")])
    by_id = {r.own_id: r for r in refs}
    assert {"a", "b é", "s1", "s2", "from-parquet"} <= set(by_id)
    assert by_id["s1"].member == "s1.jpg"
    errors = {r.own_id: r.error for r in refs if r.error}
    assert "unsupported input" in errors["notes"]
    assert "no 'uri' column" in errors["nouri"]
    assert "cannot read" in errors["gone"]
    assert {r.own_id: r.error_kind for r in refs if r.error} == {
        "notes": "unsupported",
        "nouri": "unsupported",
        "gone": "unreadable",
    }
    data = read_image_bytes([by_id["s2"], by_id["a"], ImageRef(str(tmp_path / "shard.tar"), "s9.jpg", "s9")])
    assert decode_image(data[0]).width == 64 and decode_image(data[1]).width == 64
    assert "member not found" in str(data[2]) and data[2].kind == "unreadable"


def image_list_config(tmp_path, images: list[str]):
    from pipelines.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("pool: {dir: /tmp/pool, sources: [a.wav]}\nmodels: {clap: {model: some/model}}\n")
    return load_config(path, [f"sonify.images={images}", f"sonify.out={tmp_path / 'out'}"])


def test_bad_parquet_lists_are_error_rows_and_the_listing_table_is_made(tmp_path):
    from pipelines.sonify.listing import image_listing
    from schemas.layout import SonifyLayout

    good = tmp_path / "good.png"
    good.write_bytes(encode(gradient(), "PNG"))
    pq.write_table(pa.table({"uri": [str(good), None, ""]}), tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"uri": [str(good), None], "image_id": ["kept", "lost"]}), tmp_path / "ids.parquet")
    pq.write_table(pa.table({"uri": [3, 4]}), tmp_path / "numbers.parquet")
    pq.write_table(
        pa.table({"uri": [str(good)] * 3, "image_id": pa.array([{"a": 1}, None, {"a": 2}])}),
        tmp_path / "struct.parquet",
    )
    pq.write_table(pa.table({"uri": [str(good)], "image_id": [b"\xff\x00"]}), tmp_path / "binary.parquet")
    (tmp_path / "fake.parquet").write_bytes(b"not a parquet file")
    config = image_list_config(tmp_path, [str(tmp_path / "*.parquet")])
    table, stats = image_listing(config, SonifyLayout(str(tmp_path / "out")))
    rows = table.to_pylist()
    assert stats["listed"] == len(rows) == 12
    errors = sorted(
        (PurePosixPath(r["uri"]).name, r["error_kind"], r["error"].split(": ", 1)[1]) for r in rows if r["error"]
    )
    assert errors == [
        ("fake.parquet", "unreadable", errors[0][2]),
        ("ids.parquet", "bad_container", "row 1: 'uri' is null"),
        ("nulls.parquet", "bad_container", "row 1: 'uri' is null"),
        ("nulls.parquet", "bad_container", "row 2: 'uri' is str '', not a path or URL"),
        ("numbers.parquet", "bad_container", "row 0: 'uri' is int 3, not a path or URL"),
        ("numbers.parquet", "bad_container", "row 1: 'uri' is int 4, not a path or URL"),
    ]
    assert errors[0][2].startswith("cannot read as Parquet (ArrowInvalid: ")
    assert {r["image_id"] for r in rows if r["uri"] == str(good)} >= {"kept", "{'a': 1}", "{'a': 2}"}
    assert len({r["image_id"] for r in rows}) == len(rows)


def webdataset_tar(count: int) -> tuple[bytes, dict[str, int]]:
    """A tar of `count` samples (a noise PNG and a json each), and where each PNG's data starts."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(count):
            pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            for ext, payload in (("png", encode(Image.fromarray(pixels), "PNG")), ("json", b"{}")):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        starts = {m.name: m.offset_data for m in tar if m.name.endswith(".png")}
    return data, starts


@pytest.mark.parametrize("cut_in", ["data", "header"])
def test_a_truncated_tar_keeps_the_images_before_the_damage(tmp_path, cut_in):
    data, starts = webdataset_tar(5)
    # Inside the fourth image's data, or inside its header: three images are whole either way.
    cut = starts["s3.png"] + 1000 if cut_in == "data" else starts["s3.png"] - 300
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    refs = list_images([str(tmp_path / "cut.tar")])
    assert [r.member for r in refs if not r.error] == ["s0.png", "s1.png", "s2.png"]
    damaged = [r for r in refs if r.error]
    if cut_in == "data":
        assert len(damaged) == 1 and damaged[0].error_kind == "unreadable"
        assert "unreadable tar (3 images listed before the damage; " in damaged[0].error
    else:
        # A tar cut between two members ends like a whole one: tarfile sees no damage to report.
        assert damaged == []
    images = read_image_bytes([r for r in refs if not r.error])
    assert [decode_image(b).width for b in images] == [48, 48, 48]


def test_images_named_in_latin1_are_listed_under_storable_names_and_read(tmp_path):
    import os

    folder = os.fsencode(tmp_path)
    with open(folder + b"/caf\xe9.png", "wb") as handle:
        handle.write(encode(gradient(), "PNG"))
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        payload = encode(gradient(32, 32), "PNG")
        info = tarfile.TarInfo(b"na\xefve.png".decode("utf-8", "surrogateescape"))
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    refs = list_images([str(tmp_path / "*")])
    assert sorted((r.own_id, r.member) for r in refs) == [("caf%E9", None), ("na%EFve", "na%EFve.png")]
    table = make_table(
        IMAGE_REFS,
        {"image_id": [r.own_id for r in refs], "uri": [r.uri for r in refs], "member": [r.member for r in refs]}
        | {"error": [None] * 2, "error_kind": [None] * 2},
    )
    assert table.num_rows == 2
    assert sorted(decode_image(data).width for data in read_image_bytes(refs)) == [32, 64]


def test_ids_are_own_ids_unless_they_collide():
    refs = [ImageRef("/x/a.jpg", None, "a"), ImageRef("/y/a.jpg", None, "a"), ImageRef("/y/b.jpg", None, "b")]
    ids = assign_image_ids(refs)
    assert ids[2] == "b"
    assert ids[0] != ids[1] and len(ids[0]) == 16
    assert assign_image_ids(refs) == ids


def test_tar_member_key():
    assert tar_member_key("dir/abc.seg.jpg") == "dir/abc"
    assert tar_member_key("abc.jpg") == "abc"


def test_sixteen_bit_rgb_keeps_the_high_byte():
    array = np.zeros((48, 64, 3), np.uint16)
    array[..., 0] = 0xAB12
    array[..., 1] = 0x00FF
    array[..., 2] = 0xFF00
    decoded = decode_image(png(64, 48, 16, 2, array))
    assert decoded.image.getpixel((5, 5)) == (0xAB, 0x00, 0xFF)


@pytest.mark.parametrize("orientation, size, corner", [(3, (64, 48), (0, 0, 255)), (8, (48, 64), (0, 255, 0))])
def test_exif_orientations_put_the_top_left_corner_where_displayed(orientation, size, corner):
    """A red top-left, green top-right, blue bottom-left quadrant image: after a 180 degree turn the
    blue corner is top-right; after orientation 8 (90 degrees counter-clockwise) green is top-left."""
    array = np.zeros((48, 64, 3), np.uint8)
    array[:24, :32] = (255, 0, 0)
    array[:24, 32:] = (0, 255, 0)
    array[24:, :32] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(Image.fromarray(array), "PNG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == size
    probe = (decoded.width - 4, 4) if orientation == 3 else (4, 4)
    assert decoded.image.getpixel(probe) == corner


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_corrupt_exif_is_ignored():
    data = encode(gradient(64, 48), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03")
    assert (decode_image(data).width, decode_image(data).height) == (64, 48)


def test_pillows_own_bomb_limit_is_reported_as_the_bomb_guard():
    # The header claims 200M pixels; no pixel data is there to decode.
    with pytest.raises(BadImage, match="over the decompression-bomb limit"):
        decode_image(png(20000, 10000, 8, 2), max_pixels=10**9)


def test_bomb_guard_reads_the_header_only():
    with pytest.raises(BadImage, match="4000x3000 pixels is over the decompression-bomb limit of 1000000"):
        decode_image(png(4000, 3000, 8, 2), max_pixels=1_000_000)


def test_duplicate_ids_across_inputs_are_all_kept_and_unique(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0001.jpg").write_bytes(encode(gradient(), "JPEG"))
    for name in ("x.tar", "y.tar"):
        with tarfile.open(tmp_path / name, "w") as tar:
            payload = encode(gradient(), "JPEG")
            info = tarfile.TarInfo("0001.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    same = str(tmp_path / "a" / "0001.jpg")
    pq.write_table(pa.table({"uri": [same, same], "image_id": ["0001", "0001"]}), tmp_path / "list.parquet")
    refs = list_images(
        [str(tmp_path / "a" / "*"), str(tmp_path / "b" / "*"), str(tmp_path / "*.tar"), str(tmp_path / "list.parquet")]
    )
    assert len(refs) == 6 and all(r.own_id == "0001" for r in refs)
    ids = assign_image_ids(refs)
    assert len(set(ids)) == 6
    assert ids == assign_image_ids(list(refs))


def write_image_inputs(folder) -> dict[str, tuple[str, str | None]]:
    """Every awkward image case as a file; name -> (expected error fragment or None, expected dropped)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    # Noise does not compress, so half of each file stops inside the image data.
    speckle = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))

    def half(data: bytes) -> bytes:
        return data[: len(data) // 2]

    files = {
        "zero bytes.jpg": (b"", ("empty file (0 bytes)", None)),
        "text.png": (b"<html>404 not found</html>", ("not a decodable image", None)),
        "cut.jpg": (half(encode(speckle, "JPEG")), ("not a decodable image", None)),
        "cut.png": (half(encode(speckle, "PNG")), ("not a decodable image", None)),
        "cut.webp": (half(encode(speckle, "WEBP")), ("not a decodable image", None)),
        "huge.png": (png(4000, 3000, 8, 2), ("4000x3000 pixels is over the decompression-bomb limit of 1000000", None)),
        "cmyk.jpg": (encode(gradient(mode="CMYK"), "JPEG"), (None, None)),
        "grey16.png": (png(64, 48, 16, 0, np.full((48, 64, 1), 40000)), (None, None)),
        "rgb16.png": (png(64, 48, 16, 2, np.full((48, 64, 3), 40000)), (None, None)),
        "palette.png": (encode(gradient(mode="P"), "PNG", transparency=0), (None, None)),
        "alpha.webp": (encode(gradient(mode="RGBA"), "WEBP"), (None, None)),
        "rotated.jpg": (encode(gradient(64, 48), "JPEG", exif=exif.tobytes()), (None, None)),
        "café au lait ü.png": (encode(gradient(), "PNG"), (None, None)),
        "tiny.png": (encode(gradient(10, 10), "PNG"), (None, "too_small")),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def test_decode_stage_gives_every_bad_image_a_row(tmp_path):
    expected = write_image_inputs(tmp_path)
    refs = list_images([str(tmp_path / "*"), str(tmp_path / "gone.jpg")])
    assert len(refs) == len(expected) + 1
    batch = make_table(
        IMAGE_REFS,
        {
            "image_id": assign_image_ids(refs),
            "uri": [r.uri for r in refs],
            "member": [r.member for r in refs],
            "error": [r.error for r in refs],
            "error_kind": [r.error_kind for r in refs],
        },
    )
    rows = {
        PurePosixPath(r["uri"]).name: r
        for r in DecodeImages(min_side=32, max_image_pixels=1_000_000).process_batch(batch).to_pylist()
    }
    assert set(rows) == {*expected, "gone.jpg"}
    assert rows["gone.jpg"]["error"].startswith(f"cannot read {tmp_path / 'gone.jpg'}: FileNotFoundError")
    assert rows["gone.jpg"]["error_stage"] == "images"
    for name, (error, dropped) in expected.items():
        row = rows[name]
        if error:
            assert row["error"].startswith(f"{tmp_path / name}: ") and error in row["error"], name
            assert row["error_stage"] == "images" and row["image_bytes"] is None, name
            continue
        assert row["error"] is None and row["error_stage"] is None, name
        assert row["dropped"] == dropped, name
        if dropped is None:
            assert row["image_bytes"] == (tmp_path / name).read_bytes(), name
    assert {name: row["error_kind"] for name, row in rows.items() if row["error"]} == {
        "gone.jpg": "unreadable",
        "zero bytes.jpg": "empty",
        "text.png": "undecodable",
        "cut.jpg": "undecodable",
        "cut.png": "undecodable",
        "cut.webp": "undecodable",
        "huge.png": "too_large",
    }
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (48, 64)
    assert {rows[n]["format"] for n in ("grey16.png", "rgb16.png", "palette.png")} == {"png"}


def test_an_unexpected_failure_is_that_images_error_only(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(encode(gradient(), "PNG"))
    (tmp_path / "b.png").write_bytes(encode(gradient(mode="RGBA"), "PNG"))
    original = Image.Image.convert

    def convert(image, mode=None, *args, **kwargs):
        if image.mode == "RGBA":
            raise MemoryError("no room")
        return original(image, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)
    refs = list_images([str(tmp_path / "*.png")])
    batch = make_table(
        IMAGE_REFS,
        {
            "image_id": ["a", "b"],
            "uri": [r.uri for r in refs],
            "member": [None, None],
            "error": [None, None],
            "error_kind": [None, None],
        },
    )
    rows = DecodeImages(min_side=8, max_image_pixels=10**6).process_batch(batch).to_pylist()
    assert rows[0]["error"] is None and rows[0]["width"] == 64
    assert rows[1]["error"] == f"{tmp_path / 'b.png'}: decoding failed (MemoryError: no room)"


@pytest.mark.parametrize(
    "size,max_side,expected", [((400, 100), 200, (200, 50)), ((90, 300), 100, (30, 100)), ((50, 40), 100, (50, 40))]
)
def test_bound_side_keeps_the_aspect_ratio_and_never_upscales(size, max_side, expected):
    from stages.images.decoding import bound_side

    assert bound_side(Image.new("RGB", size), max_side).size == expected


def test_original_keeps_the_bytes_and_ignores_the_uri_for_its_extension():
    from stages.images.decoding import ImageEncoding, shard_image

    data = b"any bytes: the images stage decoded them already"
    stored = shard_image(data, "mpo", (30, 20), ImageEncoding("original"))
    assert (stored.extension, stored.data, stored.width, stored.height) == ("jpg", data, 30, 20)


def test_a_reencoded_image_is_upright():
    from stages.images.decoding import ImageEncoding, shard_image

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    stored = shard_image(buffer.getvalue(), "jpeg", (20, 40), ImageEncoding("png"))
    with Image.open(io.BytesIO(stored.data)) as decoded:
        assert decoded.format == "PNG" and decoded.size == (20, 40) == (stored.width, stored.height)


def test_reencoding_applies_the_configured_bomb_guard():
    from stages.images.decoding import BadImage, ImageEncoding, shard_image

    buffer = io.BytesIO()
    Image.new("RGB", (120, 80)).save(buffer, format="PNG")
    assert shard_image(buffer.getvalue(), "png", (120, 80), ImageEncoding("webp", max_pixels=9600)).extension == "webp"
    with pytest.raises(BadImage, match="decompression-bomb"):
        shard_image(buffer.getvalue(), "png", (120, 80), ImageEncoding("webp", max_pixels=9599))
