import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from pipelines.config import ConfigError, load_config, parse_override
from pipelines.config_reference import PAGE_PATH, TABLE_HEADER, config_reference, configuration_page
from schemas.layout import SonifyLayout

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
pool:
  dir: /tmp/pool
  sources: [a.wav]
models:
  clap:
    model: some/model
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(MINIMAL)
    return path


def test_overrides_are_parsed_as_yaml(config_file):
    config = load_config(
        config_file,
        [
            'pool.sources=["/data/a/*.wav","s3://b/c/*.flac"]',
            "pool.sample_rate=16000",
            "pool.index.kind=hnsw",
            "ray.address=auto",
        ],
    )
    assert config.pool.sources == ["/data/a/*.wav", "s3://b/c/*.flac"]
    assert config.pool.sample_rate == 16000
    assert config.pool.index.kind == "hnsw"
    assert config.ray.address == "auto"


def test_defaults(config_file):
    config = load_config(config_file)
    assert config.pool.sample_rate == 48000
    assert config.pool.clip_seconds == 5.0
    assert config.pool.index.kind == "auto"
    assert config.models.clap.backend == "transformers"


@pytest.mark.parametrize(
    "override, message",
    [
        ("pool.smaple_rate=16000", "pool.smaple_rate: unknown key"),
        ("pool.sample_rate=fast", "pool.sample_rate:"),
        ("pool.index.kind=annoy", "pool.index.kind:"),
        ("models.clap.backend=openclip", "models.clap.backend:"),
        ("pool.clip_seconds=0.1", "pool.clip_seconds:"),
        ("pool.mix_sample_rates=[100]", "pool.mix_sample_rates"),
        ("sonify.image_format=gif", "sonify.image_format:"),
        ("sonify.image_quality=0", "sonify.image_quality:"),
    ],
)
def test_bad_keys_and_types_name_the_key(config_file, override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(config_file, [override])
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


def test_resizing_needs_a_reencoding_image_format(config_file):
    assert load_config(config_file, ["sonify.max_image_side=512"]).sonify.image_format == "jpg"
    with pytest.raises(ConfigError, match="sonify.max_image_side needs sonify.image_format jpg, webp or png"):
        load_config(config_file, ["sonify.image_format=original", "sonify.max_image_side=512"])


def test_missing_required_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("pool:\n  sources: []\nmodels:\n  clap:\n    model: m\n")
    with pytest.raises(ConfigError, match="pool.dir: required key is missing"):
        load_config(path)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("pool.dir")
    with pytest.raises(ConfigError, match="empty key segment"):
        parse_override("pool..dir=x")


def test_cli_reports_config_error_in_one_line_before_any_work(config_file):
    result = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "pool", "--config", str(config_file), "pool.bogus=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {config_file}: pool.bogus: unknown key"


def test_the_configuration_page_matches_the_code():
    page = (REPO / PAGE_PATH).read_text()
    assert page == configuration_page()
    assert TABLE_HEADER + "\n".join(config_reference()) in page


def test_the_config_reference_command_prints_the_page(capsys):
    from pipelines.cli import main

    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == (REPO / PAGE_PATH).read_text()


class _Tone(BaseModel):
    """A generated tone."""

    kind: Literal["tone"]
    hertz: float = Field(440.0, description="Pitch.")


class _Noise(BaseModel):
    kind: Literal["noise"] = Field(description="noise: white noise.")
    color: str | None = Field(None, description="Colour of the noise.")


class _Gain(BaseModel):
    db: float = Field(0.0, description="Gain in dB.")


class _Shapes(BaseModel):
    sounds: list[Annotated[_Tone | _Noise, Field(discriminator="kind")]] = Field(
        default_factory=list, description="Sounds."
    )
    lead: _Tone | _Noise = Field(..., discriminator="kind", description="The lead sound.")
    gain: _Gain | None = Field(None, description="Optional gain.")
    trim: _Gain = Field(default_factory=_Gain, description="Trim.")


def test_the_reference_lists_every_shape_of_config_model():
    rows = config_reference(_Shapes)
    keys = [row.split("|")[1].strip().strip("`") for row in rows]
    assert keys == [
        "sounds",
        "sounds[kind=tone]",
        "sounds[kind=tone].hertz",
        "sounds[kind=noise]",
        "sounds[kind=noise].color",
        "lead",
        "lead[kind=tone]",
        "lead[kind=tone].hertz",
        "lead[kind=noise]",
        "lead[kind=noise].color",
        "gain",
        "gain.db",
        "trim.db",
    ]
    by_key = dict(zip(keys, rows))
    assert "A generated tone." in by_key["sounds[kind=tone]"]
    assert "noise: white noise." in by_key["lead[kind=noise]"]
    assert "| str, optional | unset | Colour of the noise. |" in by_key["sounds[kind=noise].color"]
    assert "| section, optional | unset | Optional gain. |" in by_key["gain"]
    assert "| required |" in by_key["lead"]
    assert "| `0.0` |" in by_key["trim.db"]


def test_sonify_refuses_chunks_that_split_a_vlm_batch_and_pool_does_not_care(config_file):
    from pipelines.sonify.checks import SonifyError, check_batches

    vlm = "models.vlm=[{name: a, backend: provided, path: c.jsonl, batch_size: 12}]"
    config = load_config(config_file, [vlm, "sonify.images_per_chunk=100"])
    with pytest.raises(SonifyError) as raised:
        check_batches(config)
    assert "sonify.images_per_chunk (100) must be a multiple of models.vlm.0.batch_size (12)" in str(raised.value)
    check_batches(load_config(config_file, [vlm, "sonify.images_per_chunk=96"]))


def test_cli_refuses_a_missing_pool_in_one_line_before_any_work(config_file, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "run_pipeline.py"),
            "sonify",
            "--config",
            str(config_file),
            f"pool.dir={tmp_path / 'no-pool'}",
            f"sonify.out={out}",
            "models.vlm=[{name: a, backend: provided, path: c.jsonl}]",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: pool.dir {tmp_path / 'no-pool'} holds no pool (no pool.json); "
        "build it with `run_pipeline.py pool` first"
    )
    assert not out.exists()


def test_sonify_refuses_an_output_folder_of_another_file_layout(config_file, tmp_path):
    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run
    from schemas.layout import SonifyLayout

    config = load_config(config_file, [f"sonify.out={tmp_path}"])
    (tmp_path / "config.yaml").write_text(dump_config(config))
    with pytest.raises(SonifyError, match="another file layout"):
        check_same_run(config, SonifyLayout(str(tmp_path)))
    (tmp_path / "layout.json").write_text(f'{{"layout": {SonifyLayout.VERSION}}}')
    check_same_run(config, SonifyLayout(str(tmp_path)))


def test_vlm_names_that_could_fold_two_keys_into_one_are_refused(config_file):
    def named(name: str) -> list[str]:
        return [f"models.vlm=[{{name: '{name}', backend: provided, path: c.jsonl}}]"]

    with pytest.raises(ConfigError, match=r"models.vlm.0.name: .*'b__c' contains '__'"):
        load_config(config_file, named("b__c"))
    # Image "x_" with VLM "b" and image "x" with VLM "_b" would both be "x___b".
    for bad in ("_b", "v" * 65, "a.b", ""):
        with pytest.raises(ConfigError, match="models.vlm.0.name"):
            load_config(config_file, named(bad))
    load_config(config_file, named("b_c-d"))
    load_config(config_file, named("v" * 64))


def test_a_resumed_run_may_change_execution_settings_only(config_file, tmp_path):
    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run
    from schemas.layout import SonifyLayout

    vlm = "models.vlm=[{name: a, backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}]"
    config = load_config(config_file, [f"sonify.out={tmp_path}", vlm])
    (tmp_path / "config.yaml").write_text(dump_config(config))
    (tmp_path / "layout.json").write_text(f'{{"layout": {SonifyLayout.VERSION}}}')
    execution = [
        "models.clap.concurrency=4",
        "models.clap.num_gpus=1",
        "models.clap.num_cpus=2",
        "ray.num_cpus=1",
        "models.vlm.0.concurrency=8",
        "models.vlm.0.timeout_s=5",
        "models.vlm.0.retries=9",
    ]
    changed = load_config(
        config_file,
        [f"sonify.out={tmp_path}", vlm.replace("}]", ", concurrency: 8, timeout_s: 5, retries: 9}]")]
        + [e for e in execution if not e.startswith("models.vlm")],
    )
    check_same_run(changed, SonifyLayout(str(tmp_path)))
    check_same_run(
        load_config(
            config_file, [f"sonify.out={tmp_path}", vlm, "retrieval.recall_every=3", "retrieval.recall_sample=20"]
        ),
        SonifyLayout(str(tmp_path)),
    )
    for output_setting in [
        "models.clap.batch_size=7",
        "retrieval.k=3",
        "pool.max_band_loss_lu=10",
        "retrieval.calibration_queries=9",
        "sonify.min_alignment.text_audio=0.1",
    ]:
        with pytest.raises(SonifyError, match="other settings"):
            check_same_run(
                load_config(config_file, [f"sonify.out={tmp_path}", vlm, output_setting]), SonifyLayout(str(tmp_path))
            )


def test_an_image_score_floor_needs_a_mapper_and_floors_are_cosines(config_file):
    with pytest.raises(
        ConfigError, match="sonify.min_alignment.image_audio needs a models.vlm entry of backend mapper"
    ):
        load_config(config_file, ["sonify.min_alignment.image_audio=0.1"])
    with pytest.raises(ConfigError, match="sonify.min_alignment.text_audio"):
        load_config(config_file, ["sonify.min_alignment.text_audio=1.5"])
    config = load_config(config_file, ["sonify.min_alignment.text_audio=0.2"])
    assert config.sonify.min_alignment.model_dump() == {"text_audio": 0.2, "image_audio": None}


def test_features_need_their_models_and_are_named_once(config_file):
    with pytest.raises(ConfigError, match="sonify.features: ast needs models.ast"):
        load_config(config_file, ["sonify.features=[clap_audio, ast]"])
    with pytest.raises(ConfigError, match="sonify.features: clip_image needs models.clip"):
        load_config(config_file, ["sonify.features=[clip_image]"])
    with pytest.raises(ConfigError, match="each feature once: clap_audio repeated"):
        load_config(config_file, ["sonify.features=[clap_audio, clap_audio]"])
    with pytest.raises(ConfigError, match="sonify.features.0"):
        load_config(config_file, ["sonify.features=[mfcc]"])
    config = load_config(config_file, ["sonify.features=[clip_image, clap_audio]", "models.clip={model: /m/clip}"])
    assert config.sonify.features == ["clip_image", "clap_audio"]


def test_a_resumed_run_may_change_where_feature_models_run_and_nothing_else_of_them(config_file, tmp_path):
    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run

    with_features = [
        f"sonify.out={tmp_path}",
        "sonify.features=[ast, clip_image]",
        "models.ast={model: /m/ast}",
        "models.clip={model: /m/clip}",
    ]
    (tmp_path / "config.yaml").write_text(dump_config(load_config(config_file, with_features)))
    (tmp_path / "layout.json").write_text(f'{{"layout": {SonifyLayout.VERSION}}}')
    moved = ["models.ast.concurrency=3", "models.ast.num_gpus=1", "models.clip.num_cpus=2"]
    check_same_run(load_config(config_file, with_features + moved), SonifyLayout(str(tmp_path)))
    for output_setting in ["models.ast.batch_size=3", "models.clip.model=/m/other", "sonify.features=[ast]"]:
        with pytest.raises(SonifyError, match="other settings"):
            check_same_run(load_config(config_file, with_features + [output_setting]), SonifyLayout(str(tmp_path)))


def test_a_resumed_run_refuses_a_changed_pool(tmp_path):
    from pipelines.sonify.checks import SonifyError, check_same_pool

    state = {"index_size": 10, "index_parts": {"part-a": 10}}
    grown = {"index_size": 14, "index_parts": {"part-a": 10, "part-b": 4}}
    # Before retrieval nothing depends on the pool: the state is recorded anew.
    check_same_pool(SonifyLayout(str(tmp_path)), "/pools/p", grown)
    check_same_pool(SonifyLayout(str(tmp_path)), "/pools/p", state)
    (tmp_path / "matches").mkdir()
    (tmp_path / "matches" / "000000.json").write_text("{}")
    check_same_pool(SonifyLayout(str(tmp_path)), "/pools/p", dict(state))
    with pytest.raises(SonifyError) as raised:
        check_same_pool(SonifyLayout(str(tmp_path)), "/pools/p", grown)
    message = str(raised.value)
    assert "\n" not in message
    assert "pool /pools/p is not the pool" in message and "10 clips in 1 parts; now 14 clips in 2 parts" in message
    assert "delete its matches/, plans/, manifest/ and shards/" in message and "use a new sonify.out" in message
    (tmp_path / "pool_state.json").unlink()
    with pytest.raises(SonifyError, match="did not record its pool"):
        check_same_pool(SonifyLayout(str(tmp_path)), "/pools/p", state)


def test_sample_keys_stay_valid_file_names():
    from stages.pairing.planning import sample_key

    long_id = "a" * 300
    key = sample_key(long_id, "v" * 64)
    assert len(f"{key}.json".encode()) <= 255
    assert key != sample_key("a" * 299, "v" * 64)
    # Scraped names that differ only past the cut stay apart (64 bits of hash, not 32).
    keys = {sample_key(f"{'p' * 200}-{i}", "given") for i in range(200_000)}
    assert len(keys) == 200_000
    assert sample_key("photo-1", "given") == "photo-1__given"
    assert sample_key("x" * 120, "qwen") == "x" * 120 + "__qwen"


def one_vlm(entry: str) -> list[str]:
    return [f"models.vlm=[{{{entry}}}]"]


def test_each_vlm_entry_is_its_backends_model(config_file):
    from schemas.config import OpenAIVlmConfig, ProvidedVlmConfig, TransformersVlmConfig, VllmVlmConfig

    entries = [
        "{name: a, backend: vllm, model: m, engine_kwargs: {max_model_len: 8192}}",
        "{name: b, backend: transformers, model: m, num_gpus: 1}",
        "{name: c, backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1', timeout_s: 5}",
        "{name: d, backend: provided, path: c.jsonl}",
    ]
    config = load_config(config_file, [f"models.vlm=[{', '.join(entries)}]"])
    kinds = [type(v) for v in config.models.vlm]
    assert kinds == [VllmVlmConfig, TransformersVlmConfig, OpenAIVlmConfig, ProvidedVlmConfig]
    assert config.models.vlm[0].engine_kwargs == {"max_model_len": 8192}
    assert config.models.vlm[1].num_gpus == 1
    assert config.models.vlm[2].timeout_s == 5


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "name: a, backend: openai, model: m, base_url: u, engine_kwargs: {}",
            "models.vlm.0: backend openai does not take engine_kwargs (a setting of backend vllm)",
        ),
        (
            "name: a, backend: transformers, model: m, base_url: u, retries: 2",
            "backend transformers does not take base_url (a setting of backend openai), "
            "retries (a setting of backend openai)",
        ),
        (
            "name: a, backend: vllm, model: m, num_gpus: 1",
            "backend vllm does not take num_gpus (a setting of backend transformers and mapper)",
        ),
        (
            "name: a, backend: provided, path: p, model: m",
            "backend provided does not take model (a setting of backend vllm and transformers and openai)",
        ),
        ("name: a, backend: transformers, modle: m", "models.vlm.0.modle: unknown key of backend transformers"),
        ("name: a, backend: openai, model: m", "models.vlm.0.base_url: required key is missing (backend openai)"),
        ("name: a, backend: provided", "models.vlm.0.path: required key is missing (backend provided)"),
        ("name: a, backend: llava, model: m", "models.vlm.0.backend: 'llava' is not one of vllm, transformers"),
        ("name: a, model: m", "models.vlm.0.backend: required key is missing"),
    ],
)
def test_vlm_keys_are_checked_against_the_entrys_backend(config_file, entry, message):
    with pytest.raises(ConfigError) as raised:
        load_config(config_file, one_vlm(entry))
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


NO_CLAP = """
pool:
  dir: /tmp/pool
render:
  manifest: /tmp/run/manifest
  out: /tmp/rendered
"""


def test_each_command_needs_only_its_own_sections(tmp_path):
    path = tmp_path / "render.yaml"
    path.write_text(NO_CLAP)
    for command in ("render", "report"):
        assert load_config(path, command=command).models.clap is None
    for command in ("pool", "sonify"):
        with pytest.raises(ConfigError) as raised:
            load_config(path, command=command)
        assert str(raised.value).startswith(f"{path}: models.clap: required by `{command}` (CLAP embeds ")


def test_cli_refuses_sonify_without_clap_and_lets_render_past_validation(tmp_path):
    path = tmp_path / "render.yaml"
    path.write_text(NO_CLAP)

    def run(command: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(REPO / "run_pipeline.py"), command, "--config", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)

    refused = run("sonify")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: {path}: models.clap: required by `sonify` (CLAP embeds the concept texts), and not set"
    )
    rendered = run("render")
    # Validation passed: render goes on to look for the pool, which is not there.
    assert rendered.returncode == 2
    assert rendered.stderr.strip().splitlines()[-1] == "error: pool.dir /tmp/pool holds no pool (no pool.json)"


def test_a_run_whose_stored_config_this_version_cannot_read_is_not_resumed(config_file, tmp_path):
    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run

    vlm = one_vlm("name: a, backend: provided, path: c.jsonl")
    config = load_config(config_file, [f"sonify.out={tmp_path}", *vlm])
    # A VLM entry holding a key of another backend, as a flat VLM model over every backend wrote them.
    stored = dump_config(config).replace("    path: c.jsonl\n", "    path: c.jsonl\n    base_url: null\n")
    assert "base_url: null" in stored
    (tmp_path / "config.yaml").write_text(stored)
    (tmp_path / "layout.json").write_text(f'{{"layout": {SonifyLayout.VERSION}}}')
    with pytest.raises(SonifyError) as raised:
        check_same_run(config, SonifyLayout(str(tmp_path)))
    message = str(raised.value)
    assert "backend provided does not take base_url (a setting of backend openai)" in message
    assert message.endswith("run sonify again into a new sonify.out")


def test_a_resumed_run_is_the_same_run_wherever_it_lies_and_however_its_paths_are_spelt(
    config_file, tmp_path, monkeypatch
):
    import shutil

    from pipelines.config import dump_config
    from pipelines.sonify.checks import SonifyError, check_same_run
    from schemas.layout import SonifyLayout

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool").mkdir()
    (tmp_path / "images").mkdir()
    run = tmp_path / "runs" / "first"
    settings = [f"pool.dir={tmp_path / 'pool'}", f"sonify.images=[{tmp_path / 'images'}/*]"]
    config = load_config(config_file, [f"sonify.out={run}", *settings])
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(config))
    (run / "layout.json").write_text(f'{{"layout": {SonifyLayout.VERSION}}}')

    def resumes(out, *overrides: str) -> None:
        config = load_config(config_file, [f"sonify.out={out}", *settings, *overrides])
        check_same_run(config, SonifyLayout(str(out)))

    resumes(f"{run}/")
    resumes("runs/first")
    resumes("./runs/first/", "pool.dir=pool/", "sonify.images=[images/*]")
    # How the pool is built from its sources is not what sonify reads: extending a pool is documented.
    resumes(run, "pool.sources=[a.wav, 'more/*.flac']", "pool.files_per_part=3", "pool.retry_errors=true")
    shutil.copytree(run, tmp_path / "moved")
    resumes(tmp_path / "moved")

    with pytest.raises(SonifyError) as refused:
        resumes(run, "sonify.images=[elsewhere/*]", "pool.dir=other-pool", "retrieval.k=2")
    assert "(pool.dir, retrieval.k, sonify.images.0 differ; see its config.yaml)" in str(refused.value)
