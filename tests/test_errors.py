"""Errors: the text of an error row, the one base class of errors that stop a run, and the refusals
of files written by another version of the pipeline."""

import json

import pyarrow as pa
import pytest

from pipelines.cli import main
from pipelines.config import ConfigError, validate_config
from pipelines.pool.store import PoolMismatch, PoolStore
from pipelines.report import ReportError
from pipelines.sonify.checks import SonifyError, read_phase
from schemas import SCENES, make_table, versioned
from schemas.errors import PipelineError
from schemas.layout import PoolLayout
from stages.audio.decode import NoAudioStream, UnreadableAudio
from stages.errors import BadInput, error_text
from stages.images.decoding import BadImage
from stages.io import storage
from stages.io.sources import MissingAudioBytes
from stages.report.sql import ReportInputError
from stages.vlm.openai_stage import RequestFailed
from stages.vlm.provided_stage import ProvidedConceptsError


def test_error_text_names_the_input_then_the_stage():
    assert error_text("/a b.jpg", "empty file (0 bytes)") == "/a b.jpg: empty file (0 bytes)"
    assert error_text("/s.tar", "empty answer", "k.jpg", "qwen") == "/s.tar#k.jpg: qwen: empty answer"


@pytest.mark.parametrize(
    "error, kind",
    [
        (UnreadableAudio("not decodable (...)"), "undecodable"),
        (UnreadableAudio("empty file (0 bytes)", kind="empty"), "empty"),
        (NoAudioStream("no audio stream"), "no_audio_stream"),
        (MissingAudioBytes("no audio bytes in column 'audio'"), "empty"),
        (BadImage("not a decodable image"), "undecodable"),
        (RequestFailed("HTTP 500"), "vlm_failed"),
    ],
)
def test_input_errors_carry_their_kind_and_their_reason_alone(error, kind):
    assert isinstance(error, BadInput) and error.kind == kind
    assert error_text("/x", str(error)) == f"/x: {error.args[0]}"


@pytest.mark.parametrize(
    "error", [ConfigError, PoolMismatch, SonifyError, ReportError, ReportInputError, ProvidedConceptsError]
)
def test_every_error_that_stops_a_run_is_a_pipeline_error(error):
    assert issubclass(error, PipelineError)
    assert not issubclass(BadInput, PipelineError)


def test_a_phase_of_another_schema_version_is_refused_saying_what_to_do(tmp_path):
    url = str(tmp_path / "000000.parquet")
    older = versioned("scenes", 1, [f for f in SCENES if f.name != "error_kind"])
    storage.write_parquet(url, older.empty_table())
    with pytest.raises(
        SonifyError,
        match=r"\('scenes', 1\).*this version writes \('scenes', 3\).*run sonify again into a new sonify.out$",
    ):
        read_phase(url, SCENES)
    storage.write_parquet(url, make_table(SCENES, SCENES.empty_table()))
    assert read_phase(url, SCENES).num_rows == 0


def test_a_pool_of_another_format_is_refused_saying_what_to_do(tmp_path):
    config = validate_config({"pool": {"dir": str(tmp_path)}, "models": {"clap": {"model": "unused"}}})
    (tmp_path / "pool.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(
        PoolMismatch,
        match=f"pool format 1, this one writes {PoolLayout.FORMAT}\\); rebuild the pool into a new pool.dir$",
    ):
        PoolStore(PoolLayout(str(tmp_path))).check_compatible({"dim": 512}, config.pool)


def test_the_command_line_prints_any_pipeline_error_as_one_line_and_exits_2(tmp_path, capsys):
    pool, manifest = tmp_path / "pool", tmp_path / "manifest"
    pool.mkdir()
    (pool / "pool.json").write_text("{}")
    older = versioned("manifest", 1, [pa.field("key", pa.string())])
    storage.write_parquet(str(manifest / "000000.parquet"), older.empty_table())
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"pool": {"dir": str(pool)}, "models": {"clap": {"model": "unused"}}}))
    code = main(["render", "--config", str(config), f"render.manifest={manifest}", f"render.out={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"error: {manifest}/000000.parquet was written under schema ('manifest', 1)")
    assert err[-1].endswith("render reads manifests of this version only: sonify the images again with this version")
    assert main(["pool", "--config", str(config), "pool.no_such_key=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {config}: pool.no_such_key: unknown key"


def test_render_refuses_a_manifest_naming_clips_the_pool_lacks_in_one_line():
    import pyarrow as pa

    from schemas import MANIFEST
    from stages.pairing.planning import UnknownClips, shard_plan

    concept = {
        "label": "x",
        "text": "x",
        "clip_id": "gone-00001",
        "cosine": 0.5,
        "ssr": 0.7,
        "threshold": 0.6,
        "n_candidates": 1,
        "fallback": False,
        "target_lufs": -25.0,
        "clip_lufs": -20.0,
        "gain_db": -5.0,
    }
    row = {name: None for name in MANIFEST.names} | {
        "key": "k__v",
        "image_id": "k",
        "image_uri": "/i/k.jpg",
        "vlm": "v",
        "concepts": [concept],
    }
    manifest = pa.Table.from_pylist([row], schema=MANIFEST)
    with pytest.raises(UnknownClips) as raised:
        shard_plan(manifest, {"kept-00000": ("part-a", 0, 10)})
    assert "\n" not in str(raised.value) and "1 clips of the manifest are not in the pool (first: gone-00001)" in str(
        raised.value
    )
    located = shard_plan(manifest, {"gone-00001": ("part-a", 512, 9000)}).column("clip_locations").to_pylist()
    assert located == [[{"part": "part-a", "offset": 512, "size": 9000}]]


def test_render_skips_a_shard_whose_rows_all_failed_and_says_so(tmp_path, caplog):
    import pyarrow.parquet as pq

    from pipelines.sonify import run_render
    from schemas import MANIFEST

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "pool.json").write_text("{}")
    failed = {name: None for name in MANIFEST.names} | {
        "key": "k__v",
        "image_id": "k",
        "image_uri": "/i/k.jpg",
        "vlm": "v",
        "concepts": [],
        "error": "/i/k.jpg: cannot read (FileNotFoundError)",
        "error_kind": "unreadable",
    }
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.Table.from_pylist([failed], schema=MANIFEST), tmp_path / "manifest" / "000000.parquet")
    config = validate_config(
        {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {"clap": {"model": "unused"}},
            "render": {"manifest": str(tmp_path / "manifest"), "out": str(tmp_path / "out")},
        }
    )
    with caplog.at_level("WARNING"):
        result = run_render(config)
    assert result["shards"] == 0 and result["samples"] == 0
    assert "000000.parquet holds no sample (every row an error), so shard 000000 is not rebuilt" in caplog.text


def test_render_refuses_a_folder_made_from_another_manifest_or_setting_and_resumes_its_own(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.sonify import SonifyError, run_render
    from schemas import MANIFEST

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "pool.json").write_text("{}")
    for name, key in (("a", "k__v"), ("b", "other__v")):
        failed = {field: None for field in MANIFEST.names} | {
            "key": key,
            "image_id": key.split("__")[0],
            "image_uri": f"/i/{key}.jpg",
            "vlm": "v",
            "concepts": [],
            "error": f"/i/{key}.jpg: cannot read (FileNotFoundError)",
            "error_kind": "unreadable",
        }
        (tmp_path / name).mkdir()
        pq.write_table(pa.Table.from_pylist([failed], schema=MANIFEST), tmp_path / name / "000000.parquet")
    out = tmp_path / "rendered"

    def render(manifest: str, **sonify) -> dict:
        tree = {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {"clap": {"model": "unused"}},
            "render": {"manifest": str(tmp_path / manifest), "out": f"{out}/"},
            "sonify": sonify,
        }
        return run_render(validate_config(tree))

    render("a")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "shards" / "000000.tar").write_bytes(b"a shard of manifest a")
    render("a")
    with pytest.raises(SonifyError) as refused:
        render("b")
    assert str(refused.value) == (
        f"render.out {out} holds shards made from another manifest; "
        "use a new render.out, or delete it to render this manifest there"
    )
    with pytest.raises(
        SonifyError, match=r"holds shards made with other settings \(image_format, image_quality differ\)"
    ):
        render("a", image_format="webp", image_quality=80)
    (out / "layout.json").unlink()
    with pytest.raises(SonifyError, match=r"holds 1 files \(first: .*/shards/000000.tar\) of an origin it does not"):
        render("a")
    (out / "shards" / "000000.tar").unlink()
    render("b")
