"""The report: DuckDB aggregates against independent counts, the shard reader, the page's escaping
and gallery media, on a small run written here by hand (local and memory://)."""

from __future__ import annotations

import html.parser
import io
import json
import tarfile

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from pipelines.config import validate_config
from pipelines.report import ReportError, pool_report, run_report, sonify_report
from schemas import IMAGE_REFS, MANIFEST, POOL_CLIPS, SCENES, make_table
from schemas.layout import SonifyLayout
from stages.io import storage
from stages.io.tars import tar_bytes
from stages.report.gallery import read_samples
from stages.report.sonify import clip_usage
from stages.report.sql import histogram
from tests.helpers import POOL_PLOTS, SONIFY_PLOTS

RATE = 16000
CLIP_SECONDS = 5.0
MARKUP_LABEL = "<script>document.title='pwned'</script>"
MARKUP_TEXT = "<img src=x onerror=\"document.title='pwned'\"> barks"
MARKUP_CAPTION = 'a "quoted" & <b>bold</b> dog'
MARKUP_FILE = "im'<age>"


def flac_bytes(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    audio = (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 0.05).astype(np.float32)
    soundfile.write(buffer, audio, RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def png_bytes(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


CLIP_LICENSES = {0: "CC-BY-4.0", 1: "CC-BY-4.0", 2: "CC0-1.0", 3: "CC0-1.0"}


def concept(label: str, text: str, clip: int, cosine: float, target: float) -> dict:
    return {
        "label": label,
        "text": text,
        "clip_id": f"clip-{clip}",
        "cosine": cosine,
        "ssr": float(np.sqrt(cosine)),
        "threshold": 0.3,
        "n_candidates": 1 + clip % 4,
        "fallback": False,
        "target_lufs": target,
        "clip_lufs": -20.0,
        "gain_db": target + 20.0,
        # As the pool below has it: clips 0 and 1 are CC-BY-4.0, 2 and 3 CC0, the others have no licence.
        "license": CLIP_LICENSES.get(clip),
    }


def manifest_row(
    i: int,
    shard: str | None,
    concepts: list[dict],
    error: str | None = None,
    caption: str = "a dog",
    error_kind: str | None = None,
) -> dict:
    return {
        "key": f"img{i:03d}__qwen",
        "image_id": f"img{i:03d}",
        "image_uri": f"/data/{MARKUP_FILE if i == 0 else 'img'}{i:03d}.png",
        "image_member": None,
        "image_format": "png",
        "width": 64,
        "height": 48,
        "vlm": "qwen",
        "prompt_version": "v1",
        "caption": caption,
        "concepts": concepts,
        "dropped_concepts": 0,
        "mix_gain_db": -1.5 if i % 5 == 0 else 0.0,
        "mix_lufs": -24.0 + 0.1 * i,
        "mix_peak_dbfs": -3.0 - 0.1 * i,
        "sample_rate": RATE,
        "duration_s": CLIP_SECONDS,
        "seed": 0,
        "shard": shard,
        "error": error,
        "error_kind": error_kind,
    }


def scene_row(
    i: int,
    concepts: list[dict],
    error: str | None = None,
    stage: str | None = None,
    dropped: str | None = None,
    error_kind: str | None = None,
) -> dict:
    return {
        "image_id": f"img{i:03d}",
        "uri": f"/data/img{i:03d}.png",
        "member": None,
        "width": 64,
        "height": 48,
        "format": "png",
        "num_bytes": 100,
        "vlm": "qwen",
        "answer": None,
        "caption": "a dog",
        "concepts": [{"label": c["label"], "text": c["text"]} for c in concepts],
        "dropped_empty_concepts": 0,
        "dropped": dropped,
        "error": error,
        "error_kind": error_kind,
        "error_stage": stage,
    }


SAMPLES = 12  # images 0..11 become samples; 10 of them in shard 000000, 2 in 000001
WRITE_FAILURE = 12  # planned in shard 000001 but its image could not be read at write time
# image -> (scene error, stage, dropped): each a rejected scene of a known kind
REJECTED = {
    13: ("/data/img013.png: empty file (0 bytes)", "images", None),
    14: ("/data/img014.png: not a decodable image (cannot identify)", "images", None),
    15: (None, None, "too_small"),
    16: ("/data/img016.png: answer is not JSON", "concepts", None),
    17: (None, None, "non_sonic"),
    18: (None, None, None),  # no concept above retrieval.min_cosine
}
# The error_kind the pipeline stores with each rejected scene's error or drop.
REJECTED_KINDS = {
    13: "empty",
    14: "undecodable",
    15: "too_small",
    16: "bad_answer",
    17: "non_sonic",
    18: "no_usable_clip",
}


def sample_concepts(i: int) -> list[dict]:
    chosen = [
        concept(
            MARKUP_LABEL if i == 0 else "dog", MARKUP_TEXT if i == 0 else "a dog barks", i % 3, 0.2 + 0.05 * i, -25.0
        )
    ]
    if i % 2:
        chosen.append(concept("rain", "rain on a roof", 3 + i % 2, 0.4, -26.0))
    return chosen


def write_run(root: str) -> dict:
    """A finished sonify run and its pool, as the pipeline lays them out. Returns the config tree."""
    out, pool = storage.join(root, "out"), storage.join(root, "pool")
    rows = [
        manifest_row(
            i,
            "000000.tar" if i < 10 else "000001.tar",
            sample_concepts(i),
            caption=MARKUP_CAPTION if i == 0 else "a dog",
        )
        for i in range(SAMPLES)
    ]
    rows.append(
        manifest_row(
            WRITE_FAILURE,
            "000001.tar",
            sample_concepts(WRITE_FAILURE),
            error="/data/img012.png: cannot read (gone)",
            error_kind="unreadable",
        )
    )
    rejected = [
        manifest_row(
            i,
            None,
            [],
            error=error or (f"dropped: {dropped}" if dropped else "dropped: no concept matched"),
            error_kind=REJECTED_KINDS[i],
        )
        for i, (error, _, dropped) in REJECTED.items()
    ]
    storage.write_parquet(
        storage.join(out, "manifest", "000000.parquet"),
        make_table(MANIFEST, pa.Table.from_pylist(rows[:10], schema=MANIFEST)),
    )
    storage.write_parquet(
        storage.join(out, "manifest", "000001.parquet"),
        make_table(MANIFEST, pa.Table.from_pylist(rows[10:], schema=MANIFEST)),
    )
    storage.write_parquet(
        storage.join(out, "manifest", "rejected-000000.parquet"),
        make_table(MANIFEST, pa.Table.from_pylist(rejected, schema=MANIFEST)),
    )
    scenes = [scene_row(i, sample_concepts(i)) for i in range(SAMPLES + 1)]
    scenes += [
        scene_row(i, [], error, stage, dropped, REJECTED_KINDS[i] if error else None)
        for i, (error, stage, dropped) in REJECTED.items()
    ]
    storage.write_parquet(
        storage.join(out, "scenes", "qwen", "000000.parquet"),
        make_table(SCENES, pa.Table.from_pylist(scenes, schema=SCENES)),
    )
    storage.write_parquet(
        storage.join(out, "images.parquet"),
        make_table(
            IMAGE_REFS,
            {
                "image_id": [s["image_id"] for s in scenes],
                "uri": [s["uri"] for s in scenes],
                "member": [None] * len(scenes),
                "error": [None] * len(scenes),
                "error_kind": [None] * len(scenes),
            },
        ),
    )
    for shard, members in (("000000", rows[:10]), ("000001", rows[10:SAMPLES])):
        samples = [
            (r["key"], {"png": png_bytes(64 + j, 48, j), "flac": flac_bytes(CLIP_SECONDS, j), "json": b"{}"})
            for j, r in enumerate(members)
        ]
        storage.write_bytes(storage.join(out, "shards", f"{shard}.tar"), tar_bytes(samples))
    storage.write_text(storage.join(out, "summary.json"), json.dumps({"wall_seconds": 12.0}))
    clips = [
        {
            "clip_id": f"clip-{c}",
            "source_id": f"s{c}",
            "source_uri": f"/audio/source {c}.wav",
            "source_fingerprint": "f",
            "source_sha256": "h",
            "source_format": "wav" if c < 4 else "flac",
            "source_sample_rate": 44100,
            "source_channels": 1,
            "source_duration_s": 5.0 + c,
            "chunk_index": 0,
            "start_s": 0.0,
            "duration_s": CLIP_SECONDS if c != 5 else 2.0,
            "sample_rate": 48000,
            "lufs": None if c == 5 else -20.0 - c,
            "peak_dbfs": -3.0,
            "loudness_at_rates": [],
            "silent": c == 5,
            "part": "part-1",
            "error": None,
            "error_kind": None,
            "license": CLIP_LICENSES.get(c),
        }
        for c in range(6)
    ]
    clips.append(
        {
            **clips[0],
            "clip_id": "bad-error",
            "source_uri": "/audio/broken.wav",
            "chunk_index": -1,
            "error": "/audio/broken.wav: empty file (0 bytes)",
            "error_kind": "empty",
        }
    )
    storage.write_parquet(
        storage.join(pool, "clips", "part-1.parquet"),
        make_table(POOL_CLIPS, pa.Table.from_pylist(clips, schema=POOL_CLIPS)),
    )
    storage.write_text(storage.join(pool, "index", "index.json"), json.dumps({"size": 5}))
    return {
        "pool": {"dir": pool, "clip_seconds": CLIP_SECONDS},
        "models": {"clap": {"model": "unused"}},
        "sonify": {"out": out},
        "report": {"gallery_size": 16, "thumbnail_px": 40},
    }


class PageReader(html.parser.HTMLParser):
    """What a browser would build from the page: its elements with their attributes, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @classmethod
    def read(cls, page: str) -> PageReader:
        reader = cls()
        reader.feed(page)
        return reader

    def all(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


@pytest.fixture
def local_run(tmp_path):
    return validate_config(write_run(str(tmp_path)))


def test_histogram_matches_numpy():
    values = np.random.default_rng(0).normal(size=5000)
    with duckdb.connect() as con:
        con.register("t", pa.table({"x": np.concatenate([values, [np.nan, np.inf]])}))
        hist = histogram(con, "t", "x", bins=25)
    counts, _ = np.histogram(values, bins=hist.edges)
    assert hist.counts.tolist() == counts.tolist()
    assert hist.total == 5000 and hist.missing == 2


def test_integer_histogram_has_one_bin_per_value():
    values = [1, 1, 2, 5, 5, 5]
    with duckdb.connect() as con:
        con.register("t", pa.table({"n": pa.array(values, pa.int32())}))
        hist = histogram(con, "t", "n", bins=40, integer=True)
    centres = (hist.edges[:-1] + hist.edges[1:]) / 2
    assert dict(zip(centres.tolist(), hist.counts.tolist())) == {1.0: 2, 2.0: 1, 3.0: 0, 4.0: 0, 5.0: 3}


def test_clip_usage_concentration():
    uses = np.array([1, 1, 2, 4, 12])
    usage = clip_usage(uses, pool_clips=8)
    padded = np.concatenate([np.zeros(3), uses])
    mean_difference = np.abs(padded[:, None] - padded[None, :]).mean()
    assert usage.gini == pytest.approx(mean_difference / (2 * padded.mean()))
    assert (usage.distinct, usage.uses, usage.population, usage.top_share) == (5, 20, 8, 1.0)
    assert usage.lorenz_y[0] == 0 and usage.lorenz_y[-1] == pytest.approx(1.0)
    assert np.all(usage.lorenz_y <= usage.lorenz_x + 1e-12)
    even = clip_usage(np.full(30, 3), pool_clips=30)
    assert even.gini == pytest.approx(0.0) and even.top_share == pytest.approx(20 / 30)


class CountingReader(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self.stream.seek(offset, whence)

    def tell(self):
        return self.stream.tell()

    def readinto(self, buffer):
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


def test_shard_reader_reads_headers_and_wanted_members_only():
    long_key = "k" * 150  # longer than a ustar name: a PAX header carries it
    payload = {i: {"flac": bytes([i]) * 200_000, "jpg": bytes([i + 1]) * 50_000} for i in range(8)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, members in payload.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{long_key}{i}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shard = buffer.getvalue()
    reader = CountingReader(shard)
    found = read_samples(io.BufferedReader(reader, buffer_size=512), [f"{long_key}5", f"{long_key}2", "absent"])
    assert found == {f"{long_key}5": payload[5], f"{long_key}2": payload[2]}
    wanted = 2 * (200_000 + 50_000)
    assert reader.bytes_read < wanted + 64 * 1024, (
        f"read {reader.bytes_read} of a {len(shard)}-byte shard for {wanted} wanted bytes"
    )


def test_sonify_report_counts_problems_gallery_and_escaping(local_run):
    index = sonify_report(local_run)
    folder = index.rsplit("/", 1)[0]
    page = PageReader.read(storage.read_bytes(index).decode())
    text = "".join(page.text)

    # Untrusted strings appear as text and add no element or handler.
    assert not page.all("script")
    assert not [a for _, attrs in page.elements for a in attrs if a.startswith("on")]
    for untrusted in (MARKUP_LABEL, MARKUP_TEXT, MARKUP_CAPTION):
        assert untrusted in text
    assert f"/data/{MARKUP_FILE}000.png" in text

    rows = {tuple(cells) for cells in _table_rows(storage.read_bytes(index).decode(), "counts")}
    manifest = (
        pq.read_table(f"{local_run.sonify.out}/manifest/000000.parquet").to_pylist()
        + pq.read_table(f"{local_run.sonify.out}/manifest/000001.parquet").to_pylist()
    )
    written = [r for r in manifest if r["error"] is None]
    assert ("samples written", str(len(written))) in rows
    assert ("distinct clips used", str(len({c["clip_id"] for r in written for c in r["concepts"]}))) in rows
    assert ("concepts in written samples", str(sum(len(r["concepts"]) for r in written))) in rows
    used = {c["clip_id"] for r in written for c in r["concepts"]}
    for license in ("CC-BY-4.0", "CC0-1.0", None):
        clips = {c for c in used if CLIP_LICENSES.get(int(c.rsplit("-", 1)[1])) == license}
        what = f"distinct clips used under {license}" if license else "distinct clips used without a licence"
        assert clips and (what, str(len(clips))) in rows
    assert ("images decoded", str(SAMPLES + 1 + len(REJECTED) - 2)) in rows

    problems = {p["kind"]: p for p in json.loads(storage.read_bytes(f"{folder}/report.json"))["problems"]}
    assert {k: p["count"] for k, p in problems.items()} == {
        "image: empty": 1,
        "image: undecodable": 1,
        "dropped: too_small": 1,
        "concepts error (qwen)": 1,
        "dropped: non_sonic (qwen)": 1,
        "retrieval: no_usable_clip (qwen)": 1,
        "write: unreadable": 1,
    }
    assert problems["image: empty"]["examples"] == [{"file": "/data/img013.png", "reason": REJECTED[13][0]}]

    plots = [a["src"] for a in page.all("img") if a["src"].startswith("plots/")]
    assert sorted(plots) == sorted(f"plots/{n}.png" for n in SONIFY_PLOTS)
    for src in plots:
        assert Image.open(io.BytesIO(storage.read_bytes(f"{folder}/{src}"))).format == "PNG"

    audio = [a["src"] for a in page.all("audio")]
    thumbs = [a["src"] for a in page.all("img", **{"class": "thumb"})]
    assert len(audio) == len(thumbs) == SAMPLES
    for src in audio:
        info = soundfile.info(io.BytesIO(storage.read_bytes(f"{folder}/{src}")))
        assert info.duration == pytest.approx(CLIP_SECONDS)
    for src in thumbs:
        with Image.open(io.BytesIO(storage.read_bytes(f"{folder}/{src}"))) as image:
            assert image.format == "JPEG" and max(image.size) <= local_run.report.thumbnail_px


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    class Rows(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.rows = False, []

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.inside = dict(attrs).get("id") == table_id
            elif tag == "tr" and self.inside:
                self.rows.append([])
            elif tag == "td" and self.inside:
                self.rows[-1].append("")

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False

        def handle_data(self, data):
            if self.inside and self.rows and self.rows[-1]:
                self.rows[-1][-1] += data

    reader = Rows()
    reader.feed(page)
    return [[cell.strip() for cell in row] for row in reader.rows if row]


def test_gallery_choice_is_seeded_and_removes_media_it_no_longer_shows(local_run):
    index = sonify_report(local_run)
    keys = json.loads(storage.read_bytes(index.replace("index.html", "report.json")))["gallery"]
    assert json.loads(storage.read_bytes(index.replace("index.html", "report.json")))["gallery"] == keys
    assert (
        sonify_report(local_run)
        and json.loads(storage.read_bytes(index.replace("index.html", "report.json")))["gallery"] == keys
    )
    other = local_run.model_copy(
        update={"report": local_run.report.model_copy(update={"gallery_seed": 1, "gallery_size": 3})}
    )
    sonify_report(other)
    chosen = json.loads(storage.read_bytes(index.replace("index.html", "report.json")))["gallery"]
    assert len(chosen) == 3 and chosen != keys[:3]
    media = storage.list_files(index.replace("index.html", "media"), "")
    assert len(media) == 2 * 3


def test_reports_on_an_fsspec_url():
    config = validate_config(write_run("memory://report-test"))
    urls = run_report(config, "all")
    assert urls == ["memory://report-test/out/report/index.html", "memory://report-test/pool/report/index.html"]
    page = PageReader.read(storage.read_bytes(urls[0]).decode())
    for element in page.all("audio") + page.all("img"):
        assert storage.exists(f"memory://report-test/out/report/{element['src']}")


def test_pool_report(local_run):
    index = pool_report(local_run)
    page = storage.read_bytes(index).decode()
    rows = {tuple(cells) for cells in _table_rows(page, "counts")}
    assert {
        ("source files", "7"),
        ("source files with an error", "1"),
        ("clips", "6"),
        ("silent clips (never retrieved)", "1"),
        ("clips with zero padding", "1"),
        ("clips in the index", "5"),
        ("clips under CC-BY-4.0", "2"),
        ("clips under CC0-1.0", "2"),
        ("clips without a licence", "2"),
    } <= rows
    report = json.loads(storage.read_bytes(index.replace("index.html", "report.json")))
    assert report["problems"] == [
        {
            "kind": "audio: empty",
            "count": 1,
            "examples": [{"file": "/audio/broken.wav", "reason": "/audio/broken.wav: empty file (0 bytes)"}],
        }
    ]
    assert report["silent_share"] == pytest.approx(1 / 6)
    assert sorted(a["src"] for a in PageReader.read(page).all("img")) == [f"plots/{n}.png" for n in sorted(POOL_PLOTS)]


def test_nothing_to_report_is_a_clear_error(tmp_path):
    config = validate_config(
        {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {"clap": {"model": "x"}},
            "sonify": {"out": str(tmp_path / "out")},
        }
    )
    with pytest.raises(ReportError, match="nothing to report"):
        run_report(config, "all")
    with pytest.raises(ReportError, match="holds no manifest"):
        run_report(config, "sonify")


def test_gallery_keeps_the_samples_it_cannot_read(local_run):
    lost = f"{local_run.sonify.out}/shards/000001.tar"
    storage.remove(lost)
    page = PageReader.read(storage.read_bytes(sonify_report(local_run)).decode())
    assert len(page.all("div", **{"class": "item"})) == SAMPLES
    assert len(page.all("audio")) == len(page.all("img", **{"class": "thumb"})) == 10
    reasons = [t for t in page.text if "cannot read the shard" in t]
    assert len(reasons) == SAMPLES - 10 and all(lost in r for r in reasons)


def test_report_settings_do_not_change_which_run_sonify_out_holds(local_run):
    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run

    out = local_run.sonify.out
    storage.write_text(f"{out}/config.yaml", dump_config(local_run))
    storage.write_text(f"{out}/layout.json", json.dumps({"layout": SonifyLayout.VERSION}))
    other_report = local_run.model_copy(
        update={"report": local_run.report.model_copy(update={"gallery_size": 3, "gallery_seed": 9})}
    )
    check_same_run(other_report, SonifyLayout(out))
    other_mix = local_run.model_copy(update={"mix": local_run.mix.model_copy(update={"lufs_max": -20.0})})
    with pytest.raises(SonifyError, match="other settings"):
        check_same_run(other_mix, SonifyLayout(out))


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """A moto S3 server on loopback, reached through s3fs with the standard AWS variables."""
    import logging
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = tmp_path / "absent"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_CONFIG_FILE": str(nowhere),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
    }.items():
        monkeypatch.setenv(name, value)
    # s3fs keeps one client per set of arguments; one made for another test's server is gone.
    s3fs.S3FileSystem.clear_instance_cache()
    storage.makedirs("s3://report-bucket")
    yield "s3://report-bucket"
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def test_report_on_s3_equals_the_local_one(s3_env, local_run):
    remote = validate_config(write_run(f"{s3_env}/run"))
    remote_urls = run_report(remote, "all")
    assert remote_urls == [f"{s3_env}/run/out/report/index.html", f"{s3_env}/run/pool/report/index.html"]
    run_report(local_run, "all")
    for remote_url, folder in zip(remote_urls, (local_run.sonify.out, local_run.pool.dir)):
        remote_json = json.loads(storage.read_bytes(remote_url.replace("index.html", "report.json")))
        local_json = json.loads(storage.read_bytes(f"{folder}/report/report.json"))
        assert remote_json["counts"] == local_json["counts"]
    page = PageReader.read(storage.read_bytes(remote_urls[0]).decode())
    assert len(page.all("audio")) == SAMPLES
    for element in page.all("audio") + page.all("img"):
        assert storage.exists(f"{s3_env}/run/out/report/{element['src']}")


def test_the_gallery_shows_the_lowest_and_highest_scoring_samples_first_then_a_random_choice():
    import duckdb

    from stages.report.sonify import gallery_items

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE samples AS SELECT 'k' || i AS key, 'i' || i AS image_id, '/i' || i AS image_uri, "
        "NULL::VARCHAR AS image_member, 'v' AS vlm, NULL::VARCHAR AS caption, -20.0::DOUBLE AS mix_lufs, "
        "'000000.tar' AS shard, "
        "[]::STRUCT(label VARCHAR, text VARCHAR, clip_id VARCHAR, cosine DOUBLE, gain_db DOUBLE)[] AS concepts, "
        "CASE WHEN i < 6 THEN i / 10 END AS text_audio, (10 - i) / 20 AS image_audio FROM range(10) t(i)"
    )
    con.execute("CREATE TABLE pool_clips (clip_id VARCHAR, source_uri VARCHAR, start_s DOUBLE)")
    rows = gallery_items(con, 10, 0).to_pylist()
    shown = [(r["key"], r["shown_for"]) for r in rows[:8]]
    # text_audio: k0, k1 lowest, k5, k4 highest (k6..k9 have none); image_audio among the others.
    assert shown == [
        ("k0", "lowest text_audio"),
        ("k1", "lowest text_audio"),
        ("k5", "highest text_audio"),
        ("k4", "highest text_audio"),
        ("k9", "lowest image_audio"),
        ("k8", "lowest image_audio"),
        ("k2", "highest image_audio"),
        ("k3", "highest image_audio"),
    ]
    assert sorted(r["key"] for r in rows[8:]) == ["k6", "k7"] and {r["shown_for"] for r in rows[8:]} == {None}
    assert [r["key"] for r in gallery_items(con, 3, 0).to_pylist()] == ["k0", "k1", "k5"]
