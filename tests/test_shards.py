"""Shards read back with the webdataset library, byte-stable, and planned to a size target; the
shard writer's images and metadata, on a pool written by hand (no Ray, no model)."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from schemas import MANIFEST, SHARD_PLANS
from schemas.layout import PoolLayout, SonifyLayout, shard_file, shard_id
from stages.audio.packs import encode_flac, pack_clips, quantize_pcm16
from stages.io.tars import tar_bytes
from stages.pairing.shard_stage import WriteShards
from stages.pairing.shards import below_floor, plan_shards, sample_metadata, text_audio_score, write_shard
from tests.helpers import tone


def samples():
    return [
        (
            f"img-{i:03d}",
            {"jpg": bytes([i]) * (100 + i), "flac": b"fLaC" + bytes(50), "json": json.dumps({"i": i}).encode()},
        )
        for i in range(5)
    ]


def test_webdataset_reads_every_sample(tmp_path):
    url = str(tmp_path / shard_file(shard_id(0)))
    size = write_shard(url, samples())
    assert size == (tmp_path / "000000.tar").stat().st_size
    read = list(wds.WebDataset(url, shardshuffle=False))
    assert [s["__key__"] for s in read] == [f"img-{i:03d}" for i in range(5)]
    for i, sample in enumerate(read):
        assert sample["jpg"] == bytes([i]) * (100 + i)
        assert json.loads(sample["json"]) == {"i": i}
        assert sample["flac"].startswith(b"fLaC")


def test_same_samples_same_bytes():
    assert tar_bytes(samples()) == tar_bytes(samples())


def test_dotted_key_is_rejected():
    with pytest.raises(ValueError, match="contains a dot"):
        tar_bytes([("a.b", {"jpg": b"x"})])


def test_plan_shards():
    assert plan_shards([40, 40, 40, 40, 150, 10], 100) == [0, 0, 1, 1, 2, 3]
    assert plan_shards([], 100) == []
    assert plan_shards([500], 100) == [0]


def test_long_member_names_are_read_whole_by_every_reader(tmp_path):
    import subprocess
    import tarfile

    long_key = "web_scraped_" + "x" * 150 + "_photo__given"
    short = samples()[:2]
    url = str(tmp_path / "long.tar")
    write_shard(url, [short[0], (long_key, {"jpg": b"\xff\xd8 image", "json": b"{}"}), short[1]])
    with tarfile.open(url) as tar:
        names = tar.getnames()
    assert f"{long_key}.jpg" in names and f"{long_key}.json" in names
    listed = subprocess.run(["tar", "-tf", url], capture_output=True, text=True, check=True).stdout.split()
    assert listed == names
    read = list(wds.WebDataset(url, shardshuffle=False))
    assert [s["__key__"] for s in read] == ["img-000", long_key, "img-001"]
    assert read[1]["jpg"] == b"\xff\xd8 image"
    assert tar_bytes([(long_key, {"jpg": b"x"})]) == tar_bytes([(long_key, {"jpg": b"x"})])


def test_short_names_keep_plain_ustar_headers():
    import io
    import tarfile

    data = tar_bytes(samples())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples():
            for extension in sorted(members):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                    len(members[extension]),
                    0,
                    0o444,
                    0,
                    0,
                    "",
                    "",
                )
                tar.addfile(info, io.BytesIO(members[extension]))
    assert data == buffer.getvalue()


def picture_bytes(fmt: str, size=(120, 80), seed: int = 0, **options) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def writer_setup(tmp_path):
    """A pool of two clips written by hand (a tone, and the same tone inverted), and the plan rows
    of samples whose images are files named as a URL with a query string would be."""
    rate = 16000
    clip = tone(5.0, rate, 440.0, 0.2)
    pack, _ = pack_clips(
        [("tone", encode_flac(quantize_pcm16(clip), rate)), ("inverted", encode_flac(quantize_pcm16(-clip), rate))]
    )
    (tmp_path / "pool" / "audio" / str(rate)).mkdir(parents=True)
    (tmp_path / "pool" / "audio" / str(rate) / "p0.tar").write_bytes(pack)
    images = tmp_path / "images"
    images.mkdir()

    def row(key: str, data: bytes, name: str, fmt: str, size: tuple[int, int], concepts: list[str]) -> dict:
        (images / name).write_bytes(data)
        concept = {
            "label": "x",
            "text": "x",
            "source": "text",
            "cosine": 0.5,
            "corrected_cosine": 0.5,
            "ssr": 0.7,
            "threshold": 0.6,
            "n_candidates": 1,
            "fallback": False,
            "generated": False,
            "target_lufs": -25.0,
            "clip_lufs": -20.0,
        }
        return {
            "key": key,
            "image_id": key,
            "image_uri": str(images / name),
            "image_member": None,
            "image_format": fmt,
            "width": size[0],
            "height": size[1],
            "vlm": "v",
            "prompt_version": "p",
            "caption": None,
            "seed": 1,
            "sample_rate": rate,
            "dropped_concepts": 0,
            "concepts": [{**concept, "clip_id": c, "gain_db": 0.0} for c in concepts],
        }

    return tmp_path, row


def write_one_shard(root, rows, encoding):
    from stages.images.decoding import ImageEncoding

    layouts = PoolLayout(str(root / "pool")), SonifyLayout(str(root / "out"))
    writer = WriteShards(*layouts, -1.0, ImageEncoding(*encoding))
    with tarfile.open(root / "pool" / "audio" / "16000" / "p0.tar") as tar:
        where = {m.name.removesuffix(".flac"): {"part": "p0", "offset": m.offset_data, "size": m.size} for m in tar}
    plan = pa.Table.from_pylist(
        [{**r, "clip_locations": [where[c["clip_id"]] for c in r["concepts"]]} for r in rows], schema=SHARD_PLANS
    )
    result = writer.write_shard("000000", plan)
    with tarfile.open(root / "out" / "shards" / "000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    return result, members, pq.read_table(root / "out" / "manifest" / "000000.parquet").to_pylist()


def test_original_images_take_their_extension_from_the_decoded_format(writer_setup):
    root, row = writer_setup
    rows = [
        row("a", picture_bytes("JPEG"), "a.jpg?raw=1", "jpeg", (120, 80), ["tone"]),
        row("b", picture_bytes("PNG", seed=1), "b.webp", "png", (120, 80), ["tone"]),
    ]
    result, members, _ = write_one_shard(root, rows, ("original",))
    assert result["samples"] == 2
    # Both samples mix the one clip: read once, its bytes and the tar header before them.
    with tarfile.open(root / "pool" / "audio" / "16000" / "p0.tar") as tar:
        tone_bytes = tar.getmember("tone.flac").size
    assert (result["pool_clip_bytes"], result["pool_bytes_read"]) == (tone_bytes, tone_bytes + 512)
    assert sorted(members) == ["a.flac", "a.jpg", "a.json", "b.flac", "b.json", "b.png"]
    assert members["a.jpg"] == (root / "images" / "a.jpg?raw=1").read_bytes()


@pytest.mark.parametrize("fmt,pillow_name", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_every_image_is_reencoded_under_one_member_name(writer_setup, fmt, pillow_name):
    root, row = writer_setup
    sources = [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")]
    rows = [
        row(f"k{i}", picture_bytes(src, seed=i), f"k{i}.{ext}", ext, (120, 80), ["tone"])
        for i, (src, ext) in enumerate(sources)
    ]
    result, members, manifest = write_one_shard(root, rows, (fmt, 90, 60))
    assert result["samples"] == 3
    assert sorted(members) == sorted(f"k{i}.{e}" for i in range(3) for e in (fmt, "flac", "json"))
    for i in range(3):
        with Image.open(io.BytesIO(members[f"k{i}.{fmt}"])) as image:
            assert image.format == pillow_name and image.size == (60, 40)
            reference = (
                Image.open(io.BytesIO(picture_bytes("PNG", seed=i)))
                .convert("L")
                .resize((60, 40), Image.Resampling.LANCZOS)
            )
            # Lossy encoders keep luma close; another of these noise pictures differs by about 55 on average.
            assert np.abs(np.asarray(image.convert("L"), float) - np.asarray(reference, float)).mean() < 10
    assert {(r["shard_image_extension"], r["shard_image_width"], r["shard_image_height"]) for r in manifest} == {
        (fmt, 60, 40)
    }


def test_metadata_types_do_not_depend_on_the_row(writer_setup):
    root, row = writer_setup
    rows = [
        row("a", picture_bytes("PNG"), "a.png", "png", (120, 80), ["tone"]),
        row("b", picture_bytes("PNG", seed=2), "b.png", "png", (120, 80), ["tone"]),
    ]
    # b comes from a tar, as its member b.png.
    with tarfile.open(root / "images" / "in.tar", "w") as tar:
        tar.add(rows[1]["image_uri"], arcname="b.png")
    rows[1].update(image_uri=str(root / "images" / "in.tar"), image_member="b.png", caption="a caption")
    _, members, _ = write_one_shard(root, rows, ("jpg",))
    first, second = json.loads(members["a.json"]), json.loads(members["b.json"])
    # error_kind is null for every written sample and left out of its JSON.
    assert first.keys() == second.keys() == set(MANIFEST.names) - {"error_kind", "dropped"}

    def types(value):
        if isinstance(value, dict):
            return {k: types(v) for k, v in value.items()}
        if isinstance(value, list):
            return [types(v) for v in value]
        return type(value).__name__

    assert types(first) == types(second)
    # Every value is typed, but the image_audio score of a run without a mapper: null, as the card
    # declares it (float64).
    assert types(first)["image_audio"] == "NoneType" and first["text_audio"] == 0.5
    assert "NoneType" not in json.dumps(types(first | {"image_audio": 0.0}))
    assert first["image_member"] == "" and second["image_member"] == "b.png"


def test_a_silent_mix_and_an_unreadable_image_are_error_rows(writer_setup):
    root, row = writer_setup
    rows = [
        row("a", picture_bytes("PNG"), "a.png", "png", (120, 80), ["tone", "inverted"]),
        row("b", picture_bytes("PNG"), "b.png", "png", (120, 80), ["tone"]),
        row("c", b"not an image", "c.png", "png", (120, 80), ["tone"]),
    ]
    result, members, manifest = write_one_shard(root, rows, ("jpg",))
    assert (result["samples"], result["errors"]) == (1, 2)
    assert sorted(members) == ["b.flac", "b.jpg", "b.json"]
    errors = {r["key"]: r["error"] for r in manifest}
    assert "a.png: the mix of 2 sources is digital silence" in errors["a"]
    assert "c.png: not a decodable image" in errors["c"] and errors["b"] is None


def test_a_samples_json_types_null_texts_as_empty_in_the_row_and_in_its_concepts():
    numbers = {"cosine": 0.5, "corrected_cosine": 0.5, "ssr": 0.7, "threshold": 0.6, "n_candidates": 2}
    numbers |= {"fallback": False, "generated": False, "target_lufs": -25.0, "clip_lufs": -20.0, "gain_db": -5.0}
    licensed = {"label": "dog", "text": "a dog", "clip_id": "c1", "license": "CC-BY-4.0", "attribution": "Ann"}
    unlicensed = {"label": "rain", "text": "rain", "clip_id": "c2"}
    row = {name: None for name in MANIFEST.names} | {
        "key": "k",
        "image_id": "i",
        "image_uri": "/i.jpg",
        "width": 8,
        "height": 8,
        "shard_image_width": 8,
        "shard_image_height": 8,
        "vlm": "v",
        "concepts": [licensed | numbers, unlicensed | numbers],
        "dropped_concepts": 0,
        "mix_gain_db": 0.0,
        "mix_lufs": -20.0,
        "mix_peak_dbfs": -3.0,
        "sample_rate": 16000,
        "duration_s": 5.0,
        "seed": 0,
    }
    written = json.loads(sample_metadata(row))
    assert written["image_license"] == "" and written["caption"] == ""
    first, second = written["concepts"]
    assert (first["license"], first["attribution"], first["title"]) == ("CC-BY-4.0", "Ann", "")
    assert (second["license"], second["attribution"], second["source_url"]) == ("", "", "")
    assert second["gain_db"] == -5.0
    with pytest.raises(ValueError, match="sample k: gain_db is null"):
        sample_metadata(row | {"concepts": [unlicensed | numbers | {"gain_db": None}]})


def test_features_are_npy_members_beside_the_same_samples(writer_setup, tiny_models):
    """Mixing, the three feature stages and writing, in steps as the runner chains them, give the
    shard and manifest of the one-stage writer plus a KEY.<feature>.npy per sample and feature,
    each the vector its model gives the stored member when run on its own."""
    from schemas import SHARD_TASKS, make_table
    from schemas.config import AstConfig, ClapConfig, ClipConfig
    from stages.audio.decode import decode
    from stages.audio.standardize import resample, to_mono
    from stages.base import check_chain
    from stages.embed.ast_audio import TransformersAst
    from stages.embed.clap import TransformersClap
    from stages.embed.clip_image import TransformersClip
    from stages.embed.shard_features_stage import AstFeature, ClapAudioFeature, ClipImageFeature
    from stages.images.decoding import ImageEncoding
    from stages.pairing.shard_stage import MixShards, WriteMixedShards

    root, row = writer_setup
    rows = [
        row(f"k{i}", picture_bytes("PNG", seed=i), f"k{i}.png", "png", (120, 80), concepts)
        for i, concepts in enumerate([["tone"], ["tone", "inverted"], ["inverted"]])
    ]
    _, plain, plain_manifest = write_one_shard(root, rows, ("png",))

    with tarfile.open(root / "pool" / "audio" / "16000" / "p0.tar") as tar:
        where = {m.name.removesuffix(".flac"): {"part": "p0", "offset": m.offset_data, "size": m.size} for m in tar}
    plan_url = root / "plan.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{**r, "clip_locations": [where[c["clip_id"]] for c in r["concepts"]]} for r in rows], schema=SHARD_PLANS
        ),
        plan_url,
    )
    tasks = make_table(SHARD_TASKS, {"shard": ["000000"], "plan_url": [str(plan_url)]})
    clap = ClapConfig(model=tiny_models["clap_transformers"], batch_size=2)
    clip = ClipConfig(model=tiny_models["clip"], batch_size=2)
    ast = AstConfig(model=tiny_models["ast"], batch_size=2)
    features = ("clap_audio", "clip_image", "ast")
    out = SonifyLayout(str(root / "with-features"))
    stages = [
        MixShards(PoolLayout(str(root / "pool")), -1.0, ImageEncoding("png")),
        ClapAudioFeature(clap, 512, ()),
        ClipImageFeature(clip, 64, features[:1]),
        AstFeature(ast, 32, features[:2]),
        WriteMixedShards(out, features),
    ]
    check_chain(tasks.schema, stages)
    table = tasks
    for stage in stages:
        stage.setup()
        table = stage.process_batch(table)
    assert table.to_pylist() == [
        {"shard": "000000", "samples": 2, "errors": 1, "num_bytes": table["num_bytes"][0].as_py()}
        | {k: table[k][0].as_py() for k in ("pool_bytes_read", "pool_clip_bytes")}
    ]
    with tarfile.open(root / "with-features" / "shards" / "000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert {k: v for k, v in members.items() if not k.endswith(".npy")} == plain
    # k1 mixes a tone with its inverse: digital silence, an error row, in both manifests alike.
    keys = sorted({k.split(".", 1)[0] for k in plain})
    assert keys == ["k0", "k2"]
    assert sorted(k for k in members if k.endswith(".npy")) == [f"{k}.{f}.npy" for k in keys for f in sorted(features)]
    assert pq.read_table(root / "with-features" / "manifest" / "000000.parquet").to_pylist() == plain_manifest

    models = {"clap_audio": TransformersClap(clap.model), "clip_image": TransformersClip(clip.model)}
    models["ast"] = TransformersAst(ast.model)
    for key in keys:
        audio = decode(members[f"{key}.flac"])
        mono = to_mono(audio.audio)
        expected = {
            "clap_audio": models["clap_audio"].embed_audio([resample(mono, audio.sample_rate, 48000)])[0],
            "ast": models["ast"].embed_audio([resample(mono, audio.sample_rate, 16000)])[0],
            "clip_image": models["clip_image"].embed_images([Image.open(io.BytesIO(members[f"{key}.png"]))])[0],
        }
        for feature, vector in expected.items():
            stored = np.load(io.BytesIO(members[f"{key}.{feature}.npy"]), allow_pickle=False)
            assert stored.dtype == np.float32 and stored.shape == vector.shape
            np.testing.assert_allclose(stored, vector, rtol=1e-4, atol=1e-5)
    # webdataset reads the vectors as arrays, with no code of ours.
    loaded = list(wds.WebDataset(str(root / "with-features" / "shards" / "000000.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in loaded] == keys
    assert all(s["clap_audio.npy"].shape == (512,) and s["clip_image.npy"].shape == (64,) for s in loaded)


def test_the_text_score_is_the_mean_cosine_of_the_text_concepts_only():
    concepts = [
        {"source": "text", "cosine": 0.25},
        {"source": "mapper", "cosine": 0.9},
        {"source": "text", "cosine": 0.5},
    ]
    assert text_audio_score(concepts) == pytest.approx(0.375)
    # A mapper's scene has no text concept, so no text score.
    assert text_audio_score([{"source": "mapper", "cosine": 0.9}]) is None
    assert text_audio_score([]) is None


def test_a_sample_under_a_floor_is_named_by_its_first_failing_score_and_a_null_score_passes():
    floors = {"text_audio": 0.3, "image_audio": 0.1}
    assert below_floor({"text_audio": 0.3, "image_audio": 0.1}, floors) is None
    assert below_floor({"text_audio": None, "image_audio": 0.2}, floors) is None
    assert below_floor({"text_audio": 0.9, "image_audio": None}, floors) is None
    assert below_floor({"text_audio": 0.29, "image_audio": -0.5}, floors) == (
        "text_audio 0.2900 is below sonify.min_alignment.text_audio 0.3"
    )
    assert below_floor({"text_audio": 0.5, "image_audio": 0.05}, floors) == (
        "image_audio 0.0500 is below sonify.min_alignment.image_audio 0.1"
    )
    assert below_floor({"text_audio": -1.0, "image_audio": -1.0}, {"text_audio": None, "image_audio": None}) is None
    assert below_floor({"text_audio": -1.0}, {}) is None


def test_the_image_score_maps_the_clip_feature_against_the_clap_feature_and_a_floor_rejects(writer_setup, tiny_models):
    """The feature chain with a mapper: CLAP of the mix and CLIP of the image computed, the image
    score their cosine once the CLIP vector is mapped, only the asked-for feature written, each
    sample's JSON its final manifest row; a floor turns the lower sample into an error row left out
    of the tar."""
    from schemas import SHARD_TASKS, make_table
    from schemas.config import ClapConfig, ClipConfig, MapperVlmConfig
    from stages.base import check_chain
    from stages.embed.clap import TransformersClap, clap_identity
    from stages.embed.clip_image import TransformersClip, clip_identity
    from stages.embed.mapper import load_mapper, map_vectors
    from stages.embed.shard_features_stage import AlignImageAudio, ClapAudioFeature, ClipImageFeature, mix_at
    from stages.images.decoding import ImageEncoding
    from stages.pairing.shard_stage import MixShards, WriteMixedShards
    from tests.test_mapper_source import write_mapper

    root, row = writer_setup
    rows = [
        row(f"k{i}", picture_bytes("PNG", seed=i), f"k{i}.png", "png", (120, 80), concepts)
        for i, concepts in enumerate([["tone"], ["inverted"], ["tone"]])
    ]
    rows[2]["concepts"][0] |= {"source": "mapper", "text": None, "label": "mapped", "cosine": 0.1}
    with tarfile.open(root / "pool" / "audio" / "16000" / "p0.tar") as tar:
        where = {m.name.removesuffix(".flac"): {"part": "p0", "offset": m.offset_data, "size": m.size} for m in tar}
    plan_url = root / "plan.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{**r, "clip_locations": [where[c["clip_id"]] for c in r["concepts"]]} for r in rows], schema=SHARD_PLANS
        ),
        plan_url,
    )
    tasks = make_table(SHARD_TASKS, {"shard": ["000000"], "plan_url": [str(plan_url)]})
    clap = ClapConfig(model=tiny_models["clap_transformers"], batch_size=2)
    clip = ClipConfig(model=tiny_models["clip"], batch_size=2)
    identities = {"clap": clap_identity(clap), "clip": clip_identity(clip)}
    checkpoint = str(root / "mapper.safetensors")
    write_mapper(checkpoint, identities["clip"], identities["clap"])
    entry = MapperVlmConfig(name="mapped", backend="mapper", checkpoint=checkpoint)
    features = ("clip_image", "clap_audio")

    def write(out: str, floors: dict):
        stages = [
            MixShards(PoolLayout(str(root / "pool")), -1.0, ImageEncoding("png")),
            ClipImageFeature(clip, 64, ()),
            ClapAudioFeature(clap, 512, features[:1]),
            AlignImageAudio(entry, features, identities["clap"], identities["clip"]),
            WriteMixedShards(SonifyLayout(str(root / out)), ("clip_image",), True, floors),
        ]
        check_chain(tasks.schema, stages)
        table = tasks
        for stage in stages:
            stage.setup()
            table = stage.process_batch(table)
        with tarfile.open(root / out / "shards" / "000000.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        manifest = {r["key"]: r for r in pq.read_table(root / out / "manifest" / "000000.parquet").to_pylist()}
        return table.to_pylist()[0], members, manifest

    result, members, manifest = write("scored", {})
    assert (result["samples"], result["errors"]) == (3, 0)
    # Only the asked-for feature is a member; clap_audio was computed for the score alone.
    assert sorted(k for k in members if k.endswith(".npy")) == [f"k{i}.clip_image.npy" for i in range(3)]
    mapper, _ = load_mapper(checkpoint, identities["clap"], identities["clip"])
    clip_model, clap_model = TransformersClip(clip.model), TransformersClap(clap.model)
    for key, sample in manifest.items():
        image = clip_model.embed_images([Image.open(io.BytesIO(members[f"{key}.png"]))])
        mapped = map_vectors(mapper, image)[0]
        audio = clap_model.embed_audio([mix_at(members[f"{key}.flac"], 48000)])[0]
        expected = float(mapped @ audio / np.linalg.norm(mapped) / np.linalg.norm(audio))
        assert sample["image_audio"] == pytest.approx(expected, abs=1e-4)
        assert json.loads(members[f"{key}.json"])["image_audio"] == sample["image_audio"]
    assert [manifest[k]["text_audio"] for k in ("k0", "k1", "k2")] == [0.5, 0.5, None]
    assert json.loads(members["k2.json"])["text_audio"] is None

    low, high = sorted(manifest, key=lambda k: manifest[k]["image_audio"])[:2]
    floor = (manifest[low]["image_audio"] + manifest[high]["image_audio"]) / 2
    result, members, floored = write("floored", {"text_audio": 0.4, "image_audio": floor})
    assert (result["samples"], result["errors"]) == (2, 1)
    assert not any(name.startswith(f"{low}.") for name in members)
    rejected = floored[low]
    assert rejected["error_kind"] == "low_alignment" and rejected["image_audio"] == manifest[low]["image_audio"]
    assert (
        f"image_audio {manifest[low]['image_audio']:.4f} is below sonify.min_alignment.image_audio"
        in (rejected["error"])
    )
    assert all(floored[k]["error"] is None for k in floored if k != low)
