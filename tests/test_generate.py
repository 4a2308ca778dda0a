"""Sounds from text: seeds, prompt selection, the generate stage with the tiny AudioLDM, and (with
Ray) a pool that grows by exactly the generated clips, with their provenance, and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ConfigError, load_config, validate_config
from schemas import GENERATED_SOUNDS, GENERATION_REQUESTS, make_table
from schemas.config import GenerateConfig
from schemas.layout import PoolLayout
from stages.audio.generate_stage import GenerateSounds, NotATextToAudioModel, load_text_to_audio
from stages.audio.generation import (
    PromptsError,
    prompt_seed,
    read_prompt_file,
    sound_file,
    top_missing_sounds,
)
from stages.audio.packs import decode_flac


def test_a_prompt_seed_is_sha256_of_the_run_seed_and_the_prompt():
    expected = int.from_bytes(hashlib.sha256(b"7\ndog barking").digest()[:8], "big") & (2**63 - 1)
    assert prompt_seed("dog barking", 7) == expected
    seeds = {prompt_seed(p, s) for p in ("dog barking", "rain", "Dog barking") for s in (0, 1)}
    assert len(seeds) == 6
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_sound_file_is_named_by_everything_that_decides_its_audio():
    base = ("audioldm2", "rain", 5, 50, 3.5, 5.0)
    name = sound_file(*base)
    assert name.startswith("gen-") and name.endswith(".flac")
    assert sound_file(*base) == name
    for position, other in enumerate(("audioldm", "rain on a roof", 6, 40, 2.5, 10.0)):
        changed = list(base)
        changed[position] = other
        assert sound_file(*changed) != name, f"setting {position} does not change the name"


def write_missing_sounds(folder: Path, rows: list[tuple[str, int, float]], columns=("text", "requests", "best_cosine")):
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            columns[0]: [r[0] for r in rows],
            columns[1]: pa.array([r[1] for r in rows], pa.int64()),
            columns[2]: [r[2] for r in rows],
        }
    )
    pq.write_table(table, folder / "missing_sounds.parquet")
    return folder / "missing_sounds.parquet"


def test_the_top_missing_sounds_are_the_most_requested_texts(tmp_path):
    url = write_missing_sounds(
        tmp_path / "run",
        [
            ("a kettle whistling", 3, 0.1),
            ("a horse galloping on cobblestones", 12, 0.05),
            ("a distant foghorn", 7, 0.2),
            ("an old clock ticking", 7, 0.15),
            ("a zipper", 1, 0.3),
        ],
    )
    assert top_missing_sounds(str(url), 3) == [
        "a horse galloping on cobblestones",
        "a distant foghorn",
        "an old clock ticking",
    ]
    assert len(top_missing_sounds(str(url), 50)) == 5


def test_a_missing_sounds_file_without_its_columns_or_absent_is_named(tmp_path):
    url = write_missing_sounds(tmp_path / "run", [("a zipper", 1, 0.3)], columns=("text", "count", "best_cosine"))
    with pytest.raises(PromptsError, match=f"missing sounds file {url} has no column requests"):
        top_missing_sounds(str(url), 3)
    absent = tmp_path / "elsewhere" / "missing_sounds.parquet"
    with pytest.raises(PromptsError, match=f"{absent} does not exist"):
        top_missing_sounds(str(absent), 3)


def test_a_prompts_file_skips_blank_lines_and_keeps_each_prompt_once(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("rain on a tin roof\n\n   \n  a dog barking  \nrain on a tin roof\r\nwind in pines")
    assert read_prompt_file(str(path)) == ["rain on a tin roof", "a dog barking", "wind in pines"]


def test_a_prompts_file_that_is_not_utf8_or_empty_is_named(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a dog barking\nun caf\u00e9 bruyant\n".encode("latin-1"))
    with pytest.raises(PromptsError, match=f"prompts file {latin}: line 2 is not UTF-8"):
        read_prompt_file(str(latin))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(PromptsError, match=f"prompts file {blank} holds no prompt"):
        read_prompt_file(str(blank))
    with pytest.raises(PromptsError, match="does not exist"):
        read_prompt_file(str(tmp_path / "nothing.txt"))


def test_generate_config_needs_a_model_and_one_source_of_prompts(tmp_path):
    with pytest.raises(ValueError, match="set missing_from or prompts, not both"):
        GenerateConfig(model="m", missing_from="run", prompts="p.txt")
    with pytest.raises(ValueError, match="generate.dtype float16 needs a GPU"):
        GenerateConfig(model="m", prompts="p.txt", dtype="float16")
    assert GenerateConfig(model="m", prompts="p.txt", dtype="float16", num_gpus=1).dtype == "float16"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"pool: {{dir: {tmp_path / 'pool'}}}\nmodels: {{clap: {{model: clap}}}}\n")
    with pytest.raises(ConfigError, match="generate.model: required by `generate`"):
        load_config(config_file, command="generate")
    from pipelines.generate import chosen_prompts

    config = load_config(config_file, ["generate.model=m"], command="generate")
    with pytest.raises(ConfigError, match="set generate.missing_from .* or generate.prompts"):
        chosen_prompts(config)


def test_a_recorded_sound_whose_file_is_gone_stays_a_source_with_its_error(tmp_path):
    from stages.io.sources import generated_sources

    made = {"model": "m", "prompt": "rain", "seed": 1, "steps": 2, "guidance": 1.0}
    present = tmp_path / "gen-present.flac"
    present.write_bytes(b"fLaC")
    found = generated_sources({str(present): made, str(tmp_path / "gen-gone.flac"): dict(made, prompt="wind")})
    by_name = {Path(s.uri).name: s for s in found}
    assert by_name["gen-present.flac"].error is None and by_name["gen-present.flac"].generation == made
    gone = by_name["gen-gone.flac"]
    assert gone.error_kind == "unreadable" and "gen-gone.flac" in gone.error and gone.generation["prompt"] == "wind"


def test_standardize_gives_a_generated_source_its_provenance_on_every_clip(tmp_path):
    from stages.audio.standardize_stage import Standardize
    from tests.helpers import noise, write_audio

    made = {"model": "audioldm2", "prompt": "rain", "seed": 5, "steps": 20, "guidance": 3.0}
    generated_file = write_audio(tmp_path / "gen-1.flac", noise(7.0, 16000, 0.2, seed=1), 16000, "FLAC")
    recording = write_audio(tmp_path / "rec.wav", noise(3.0, 16000, 0.2, seed=2), 16000)
    rows = (
        Standardize(str(tmp_path / "pool"), 48000, 5.0, -70.0, [16000])
        .process_part(
            {
                "part": "p",
                "uris": [str(generated_file), str(recording)],
                "fingerprints": None,
                "errors": None,
                "generations": [made, None],
            }
        )
        .to_pylist()
    )
    by_source: dict[str, list] = {}
    for row in rows:
        by_source.setdefault(row["source_uri"], []).append(row["generation"])
    assert by_source == {str(generated_file): [made, made], str(recording): [None]}


def requests_for(prompts: list[str], config: GenerateConfig, run_seed: int = 0) -> pa.Table:
    from pipelines.generate import generation_requests

    run = validate_config({"seed": run_seed, "pool": {"dir": "unused"}, "generate": config.model_dump()})
    return generation_requests(prompts, run)


@pytest.fixture(scope="module")
def tiny_audioldm(tmp_path_factory) -> str:
    from demo.tiny_models import build_audioldm

    folder = tmp_path_factory.mktemp("audioldm")
    return str(build_audioldm(folder, folder / "scratch"))


@pytest.fixture(scope="module")
def tiny_audioldm2(tmp_path_factory) -> str:
    from demo.tiny_models import build_audioldm2

    folder = tmp_path_factory.mktemp("audioldm2")
    return str(build_audioldm2(folder, folder / "scratch"))


def generated(stage: GenerateSounds, requests: pa.Table, pool_dir: Path) -> tuple[pa.Table, dict[str, bytes]]:
    rows = stage.process_batch(requests)
    layout = PoolLayout(str(pool_dir))
    return rows, {f: Path(layout.generated_audio(f)).read_bytes() for f in rows.column("file").to_pylist()}


def test_the_stage_writes_the_same_sounds_twice(tmp_path, tiny_audioldm):
    config = GenerateConfig(model=tiny_audioldm, steps=3, guidance=2.5, batch_size=2)
    requests = requests_for(["a dog barking in the grass", "rain falling on a tin roof"], config)
    first_stage = GenerateSounds(str(tmp_path / "a"), config, seconds=5.0)
    first_stage.setup()
    rows, sounds = generated(first_stage, requests, tmp_path / "a")
    assert rows.schema.equals(GENERATED_SOUNDS, check_metadata=False)
    assert rows.column("file").to_pylist() == requests.column("file").to_pylist()
    assert rows.column("sample_rate").to_pylist() == [16000, 16000]
    audios = []
    for flac in sounds.values():
        audio, rate = decode_flac(flac)
        assert rate == 16000 and audio.shape == (5 * 16000,)
        assert np.abs(audio).max() > 0.01, "the tiny model must make an audible sound"
        audios.append(audio)
    assert not np.array_equal(audios[0], audios[1])

    second_stage = GenerateSounds(str(tmp_path / "b"), config, seconds=5.0)
    second_stage.setup()
    again, again_sounds = generated(second_stage, requests, tmp_path / "b")
    assert again_sounds == sounds
    # Each prompt's noise is its own: alone in a batch, a prompt gives its sound up to float rounding
    # (batched convolutions round differently), a sample or two off by one 16-bit step at most.
    second = requests.column("file")[1].as_py()
    Path(PoolLayout(str(tmp_path / "b")).generated_audio(second)).unlink()
    _, alone_sounds = generated(second_stage, requests.slice(1, 1), tmp_path / "b")
    alone, _ = decode_flac(alone_sounds[second])
    assert np.abs(alone - audios[1]).max() <= 1.5 / 32768


def test_audioldm2_is_called_the_same_way_and_writes_the_same_sound_twice(tmp_path, tiny_audioldm2):
    config = GenerateConfig(model=tiny_audioldm2, steps=2, guidance=2.5)
    requests = requests_for(["a dog barking in the grass"], config)
    sounds = []
    for run in ("a", "b"):
        stage = GenerateSounds(str(tmp_path / run), config, seconds=5.0)
        stage.setup()
        assert type(stage.pipeline).__name__ == "AudioLDM2Pipeline"
        rows, made = generated(stage, requests, tmp_path / run)
        sounds.append(made)
    assert sounds[0] == sounds[1]
    audio, rate = decode_flac(next(iter(sounds[0].values())))
    assert rate == 16000 and audio.shape == (5 * 16000,) and np.abs(audio).max() > 0.01
    assert rows.column("model").to_pylist() == ["audioldm2"]


def test_a_checkpoint_of_another_pipeline_is_refused(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(NotATextToAudioModel, match="is a DDPMPipeline checkpoint; generate takes AudioLDMPipeline"):
        load_text_to_audio(str(tmp_path / "ddpm"), "float32", use_gpu=False)


def test_the_manifest_marks_the_concepts_whose_clip_is_generated():
    from stages.pairing.planning import plan_chunk
    from tests.test_planning import TEXTS, chunk_scenes, config, matches_of, pool_clips

    pool = pool_clips()
    made = {f"clip-{i:02d}" for i in range(0, 24, 3)}
    flags = pa.array([c in made for c in pool.column("clip_id").to_pylist()])
    pool = pool.set_column(pool.schema.get_field_index("generated"), pool.schema.field("generated"), flags)
    plan = plan_chunk(config(), chunk_scenes(), matches_of(TEXTS), pool)
    concepts = [c for shard in plan.shards for row in shard.to_pylist() for c in row["concepts"]]
    assert {c["generated"] for c in concepts} == {True, False}
    assert all(c["generated"] == (c["clip_id"] in made) for c in concepts)


def test_requests_carry_the_seed_and_settings_of_each_prompt():
    config = GenerateConfig(model="cvssp/audioldm2", steps=20, guidance=3.0)
    table = requests_for(["rain", "wind"], config, run_seed=3)
    assert table.schema.equals(GENERATION_REQUESTS, check_metadata=False)
    rows = table.to_pylist()
    assert [r["seed"] for r in rows] == [prompt_seed("rain", 3), prompt_seed("wind", 3)]
    assert {r["model"] for r in rows} == {"cvssp/audioldm2"}
    assert {(r["steps"], r["guidance"]) for r in rows} == {(20, 3.0)}
    make_table(GENERATION_REQUESTS, table)


def test_a_pool_grows_by_exactly_the_generated_clips_with_their_provenance(tmp_path, tiny_models, ray_session):
    import duckdb

    from pipelines.generate import run_generate
    from pipelines.pool.run import run_pool
    from tests.helpers import noise, tone, write_audio

    src = tmp_path / "src"
    write_audio(src / "hum.wav", tone(7.0, 22050, 220.0), 22050)
    write_audio(src / "hiss.wav", noise(4.0, 16000, 0.2, seed=3), 16000)
    pool_dir = tmp_path / "pool"
    tree = {
        "seed": 11,
        "pool": {"dir": str(pool_dir), "sources": [f"{src}/*.wav"], "files_per_part": 2},
        "models": {"clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 4}},
    }
    run_pool(validate_config(tree))
    db = duckdb.connect()
    clips = f"read_parquet('{pool_dir}/clips/*.parquet')"
    embeddings = f"read_parquet('{pool_dir}/embeddings/*.parquet')"
    before = dict(db.execute(f"SELECT clip_id, embedding FROM {embeddings}").fetchall())
    parts_before = {p.name: p.read_bytes() for p in (pool_dir / "embeddings").glob("*.parquet")}
    assert len(before) == 3

    prompts = ["a dog barking in the grass", "rain falling on a tin roof", "wind blowing through leaves"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts + [prompts[0], ""]) + "\n")
    tree["generate"] = {
        "model": tiny_models["audioldm"],
        "prompts": str(tmp_path / "prompts.txt"),
        "steps": 2,
        "guidance": 2.0,
        "batch_size": 2,
    }
    summary = run_generate(validate_config(tree))
    assert summary["sounds_generated"] == 3 and summary["pool"]["files_processed"] == 3
    assert summary["pool"]["generated_clips_added"] == 3 and summary["pool"]["pool"]["generated_clips"] == 3

    rows = db.execute(
        f"SELECT c.clip_id, c.generation.model, c.generation.prompt, c.generation.seed, c.generation.steps, "
        f"c.generation.guidance, c.source_uri, e.clip_id IS NOT NULL "
        f"FROM {clips} c LEFT JOIN {embeddings} e USING (clip_id) WHERE c.generation IS NOT NULL ORDER BY 3"
    ).fetchall()
    assert [r[2] for r in rows] == sorted(prompts)
    for _, model, prompt, seed, steps, guidance, uri, embedded in rows:
        assert (model, seed, steps, guidance) == ("audioldm", prompt_seed(prompt, 11), 2, 2.0)
        assert uri.startswith(f"{pool_dir}/generated/audio/gen-") and embedded
    assert db.execute(f"SELECT count(*) FROM {clips} WHERE generation IS NULL").fetchone()[0] == 3

    after = dict(db.execute(f"SELECT clip_id, embedding FROM {embeddings}").fetchall())
    assert set(after) == set(before) | {r[0] for r in rows}
    assert {c: after[c] for c in before} == before
    parts_after = {p.name: p.read_bytes() for p in (pool_dir / "embeddings").glob("*.parquet")}
    assert {name: parts_after[name] for name in parts_before} == parts_before
    assert summary["pool"]["index"]["size"] == 6

    again = run_generate(validate_config(tree))
    assert again["sounds_generated"] == 0 and again["sounds_already_in_pool"] == 3
    assert again["pool"]["files_processed"] == 0 and again["pool"]["index"]["size"] == 6

    # Sonify over the grown pool, once allowed to choose generated clips and once not.
    made = {r[0] for r in rows}
    chosen = {}
    for allow in (True, False):
        config, summary, concepts = sonify_with(tree, tmp_path, allow)
        chosen[allow] = concepts
        report_counts_and_plays_the_generated_clips(config, summary, made)
        assert summary["concepts_with_generated_clip"] == sum(c["generated"] for c in concepts)
        assert all(c["generated"] == (c["clip_id"] in made) for c in concepts)
        mix_clips = pq.read_table(tmp_path / f"out-{allow}" / "mix_clips.parquet").to_pydict()
        assert made & set(mix_clips["clip_id"]) == (made if allow else set())
    assert any(c["generated"] for c in chosen[True])
    assert not any(c["clip_id"] in made for c in chosen[False]) and len(chosen[False]) == len(chosen[True])


def report_counts_and_plays_the_generated_clips(config, summary: dict, made: set[str]) -> None:
    import json

    from pipelines.report import run_report

    run_report(config, "all")
    report = Path(config.sonify.out) / "report"
    numbers = json.loads((report / "report.json").read_text())
    used = summary["concepts_with_generated_clip"]
    assert numbers["counts"]["concepts with a generated clip"] == used
    played = numbers["clip_usage"]["generated_clips"]
    assert {c["clip_id"] for c in played} <= made and sum(c["uses"] for c in played) == used
    page = (report / "index.html").read_text()
    assert ("Generated clips used" in page) == bool(used)
    assert sorted(p.name for p in (report / "media").glob("generated-*.flac")) == [
        f"generated-{rank:04d}.flac" for rank in range(1, len(played) + 1)
    ]
    pool_numbers = json.loads((Path(config.pool.dir) / "report" / "report.json").read_text())
    assert pool_numbers["counts"]["generated clips (run_pipeline.py generate)"] == len(made)


def sonify_with(tree: dict, root: Path, allow_generated: bool) -> tuple[object, dict, list[dict]]:
    """A sonify run of 8 images with provided concepts over the pool of `tree`; its config, its
    summary and the concepts of its manifest."""
    import json

    from PIL import Image

    from pipelines.sonify import run_sonify

    images = root / "images"
    if not images.exists():
        images.mkdir()
        lines = []
        for i in range(8):
            Image.fromarray(np.full((40, 40, 3), 25 * i, np.uint8)).save(images / f"img-{i}.png")
            concepts = [{"label": "x", "text": f"sound {j} of image {i}"} for j in range(3)]
            lines.append(json.dumps({"image_id": f"img-{i}", "concepts": concepts}))
        (root / "concepts.jsonl").write_text("\n".join(lines) + "\n")
    out = root / f"out-{allow_generated}"
    config = validate_config(
        {
            **tree,
            "models": {
                **tree["models"],
                "vlm": [{"name": "given", "backend": "provided", "path": str(root / "concepts.jsonl")}],
            },
            "sonify": {"images": [str(images / "*.png")], "out": str(out), "min_side": 16},
            "retrieval": {
                "search_k": 6,
                "k": 3,
                "min_cosine": -1.0,
                "hubness": "none",
                "allow_generated": allow_generated,
            },
        }
    )
    summary = run_sonify(config)
    manifest = pq.read_table(out / "manifest", columns=["concepts"]).column("concepts").to_pylist()
    return config, summary, [c for row in manifest for c in row]


def test_the_sounds_a_run_lacks_are_generated_and_a_new_run_finds_them(tmp_path, tiny_models, ray_session):
    """The loop a pool grows by: sonify lists its missing sounds, generate makes the top 3 and adds
    them to the pool (nothing else is embedded again), and a new run no longer drops those concepts.

    With random models no text matches a generated sound by meaning. The second run's floor is set
    just under the cosine between each generated prompt and its own clip, measured with the same
    tiny CLAP, so the texts match what was generated; a real text-to-audio model and a real CLAP
    make that match without help."""
    import duckdb

    from pipelines.generate import run_generate
    from pipelines.pool.run import run_pool
    from pipelines.sonify import run_sonify
    from stages.embed.clap import load_clap
    from tests.helpers import noise, tone, write_audio

    src = tmp_path / "src"
    write_audio(src / "hum.wav", tone(5.0, 22050, 220.0), 22050)
    write_audio(src / "hiss.wav", noise(5.0, 16000, 0.2, seed=3), 16000)
    pool_dir = tmp_path / "pool"
    # Text t is asked for by 6 - t images, so the top 3 missing sounds are texts 0, 1 and 2.
    texts = ["a dog barking", "rain on a tin roof", "a kettle whistling", "church bells", "a door creaking"]
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(images / f"img-{i}.png")
        asked = [t for n, t in enumerate(texts) if i < 6 - n]
        lines.append(json.dumps({"image_id": f"img-{i}", "concepts": [{"label": "x", "text": t} for t in asked]}))
    (tmp_path / "concepts.jsonl").write_text("\n".join(lines) + "\n")

    def config(out: str, min_cosine: float):
        return validate_config(
            {
                "seed": 5,
                "pool": {"dir": str(pool_dir), "sources": [f"{src}/*.wav"]},
                "models": {
                    "clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 8},
                    "vlm": [{"name": "given", "backend": "provided", "path": str(tmp_path / "concepts.jsonl")}],
                },
                # Every text its own group, so each generated prompt is one of the texts asked for.
                "sonify": {
                    "images": [str(images / "*.png")],
                    "out": str(tmp_path / out),
                    "min_side": 16,
                    "missing_sounds": {"group_cosine": 1.0},
                },
                "retrieval": {"search_k": 8, "k": 3, "min_cosine": min_cosine, "hubness": "none"},
                "generate": {
                    "model": tiny_models["audioldm"],
                    "missing_from": str(tmp_path / "first"),
                    "top": 3,
                    "steps": 2,
                },
            }
        )

    run_pool(config("first", 1.0))
    db = duckdb.connect()
    embeddings = f"read_parquet('{pool_dir}/embeddings/*.parquet')"
    before = dict(db.execute(f"SELECT clip_id, embedding FROM {embeddings}").fetchall())

    # No recording reaches a floor of 1: every concept is missing, each text asked for 6 - t times.
    first = run_sonify(config("first", 1.0))
    assert first["samples"] == 0 and first["missing_sounds"]["texts"] == len(texts)
    listed = db.execute(
        f"SELECT text, requests FROM read_parquet('{tmp_path}/first/missing_sounds.parquet')"
    ).fetchall()
    assert listed == [(t, 6 - n) for n, t in enumerate(texts)]

    summary = run_generate(config("first", 1.0))
    assert summary["sounds_generated"] == 3 and summary["pool"]["generated_clips_added"] == 3
    made = dict(
        db.execute(
            f"SELECT generation.prompt, clip_id FROM read_parquet('{pool_dir}/clips/*.parquet') "
            "WHERE generation IS NOT NULL"
        ).fetchall()
    )
    assert sorted(made) == sorted(texts[:3])
    after = dict(db.execute(f"SELECT clip_id, embedding FROM {embeddings}").fetchall())
    assert set(after) == set(before) | set(made.values())
    assert {c: after[c] for c in before} == before

    model = load_clap(config("first", 1.0).models.clap)
    prompts = sorted(made)
    cosines = np.sum(model.embed_text(prompts) * np.array([after[made[p]] for p in prompts], np.float32), axis=1)
    second = run_sonify(config("second", float(cosines.min()) - 1e-4))
    dropped = db.execute(
        "SELECT DISTINCT d.text FROM (SELECT unnest(dropped) AS d "
        f"FROM read_parquet('{tmp_path}/second/manifest/*.parquet'))"
    ).fetchall()
    assert not {t for (t,) in dropped} & set(prompts)
    chosen = db.execute(
        "SELECT c.text, count(*) FROM (SELECT unnest(concepts) AS c "
        f"FROM read_parquet('{tmp_path}/second/manifest/*.parquet') WHERE error IS NULL) GROUP BY 1"
    ).fetchall()
    assert {t: n for t, n in chosen if t in prompts} == {t: 6 - texts.index(t) for t in prompts}
    assert second["samples"] == 6
