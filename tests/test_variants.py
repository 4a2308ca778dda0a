"""Pool variants without Ray: chains of pedalboard effects and TorchScript timbre models, their
checks, the ids that tie a variant to its parent, the standardize stage's variant rows, and the
choice that never mixes a clip with its own variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from demo.timbre_model import build_timbre_model
from schemas.layout import PoolLayout
from schemas.pool_config import PoolConfig, VariantConfig
from stages.audio.packs import decode_flac
from stages.audio.standardize import clip_family, variant_clip_id
from stages.audio.standardize_stage import Standardize
from stages.audio.variants import BadVariant, check_chain, load_chain, variants_fingerprint, variants_for
from stages.search.choice import ConceptChoice, choose_clips
from tests.helpers import noise, write_audio

RATE = 48000


def band_energy(audio: np.ndarray, rate: int, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def lowpass(name: str = "muffled", cutoff: float = 800.0, sources: list[str] | None = None) -> VariantConfig:
    return VariantConfig(
        name=name,
        sources=sources or ["*"],
        chain=[{"effect": "LowpassFilter", "cutoff_frequency_hz": cutoff}, {"effect": "Gain", "gain_db": 3.0}],
    )


@pytest.fixture(scope="module")
def timbre_model(tmp_path_factory) -> Path:
    return build_timbre_model(tmp_path_factory.mktemp("timbre"))


def test_lowpass_chain_removes_the_band_above_its_cutoff():
    clip = noise(5.0, RATE, 0.2, seed=3)
    out = load_chain(lowpass())(clip, RATE)
    assert out.shape == clip.shape and out.dtype == np.float32
    before_high, after_high = band_energy(clip, RATE, 6000, 20000), band_energy(out, RATE, 6000, 20000)
    before_low, after_low = band_energy(clip, RATE, 20, 300), band_energy(out, RATE, 20, 300)
    # A second-order low-pass at 800 Hz takes 6-20 kHz down by well over 20 dB; below 300 Hz the +3 dB
    # gain step shows through almost whole.
    assert 10 * np.log10(after_high / before_high) < -20
    assert 10 * np.log10(after_low / before_low) == pytest.approx(3.0, abs=1.0)


def test_chains_are_deterministic_and_keep_the_clip_length():
    clip = noise(5.0, RATE, 0.2, seed=4)
    variant = VariantConfig(
        name="strange",
        chain=[
            {"effect": "PitchShift", "semitones": -5},
            {"effect": "Chorus"},
            {"effect": "Reverb", "room_size": 0.8},
            {"effect": "Distortion", "drive_db": 12},
        ],
    )
    first = load_chain(variant)
    once, twice = first(clip, RATE), first(clip, RATE)
    again = load_chain(variant)(clip, RATE)
    assert once.shape == clip.shape
    assert once.tobytes() == twice.tobytes() == again.tobytes()
    assert not np.allclose(once, clip)


def test_timbre_model_runs_through_both_interfaces(timbre_model):
    clip = noise(5.0, RATE, 0.2, seed=5)
    chains = {
        method: load_chain(VariantConfig(name=method, chain=[{"torchscript": str(timbre_model), "method": method}]))
        for method in ("forward", "encode_decode")
    }
    outs = {method: chain(clip, RATE) for method, chain in chains.items()}
    assert outs["forward"].shape == clip.shape
    # forward is decode(encode(x)) in RAVE's exports, and in the tiny one.
    np.testing.assert_allclose(outs["forward"], outs["encode_decode"], atol=1e-6)
    assert outs["forward"].tobytes() == chains["forward"](clip, RATE).tobytes()
    assert not np.allclose(outs["forward"], clip, atol=1e-3)
    described = json.loads(chains["forward"].description)
    import hashlib

    assert described == [
        {
            "method": "forward",
            "sha256": hashlib.sha256(timbre_model.read_bytes()).hexdigest(),
            "torchscript": str(timbre_model),
        }
    ]


def test_effects_and_models_mix_in_one_chain(timbre_model):
    variant = VariantConfig(
        name="mixed",
        chain=[
            {"effect": "HighpassFilter", "cutoff_frequency_hz": 200},
            {"torchscript": str(timbre_model)},
            {"effect": "LowpassFilter", "cutoff_frequency_hz": 1000},
        ],
    )
    chain = load_chain(variant)
    assert len(chain.steps) == 3
    check_chain(chain, RATE)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"effect": "NoSuchEffect"}, "'NoSuchEffect' is not a pedalboard effect"),
        ({"effect": "VST3Plugin", "path_to_plugin_file": "/x.vst3"}, "'VST3Plugin' is not a pedalboard effect"),
        ({"effect": "LowpassFilter", "cutof_hz": 3}, "step 1: LowpassFilter"),
    ],
)
def test_an_effect_that_cannot_be_built_names_its_variant_and_step(step, message):
    with pytest.raises(BadVariant, match=message) as error:
        load_chain(VariantConfig(name="broken", chain=[step]))
    assert "pool.variants broken" in str(error.value)


def test_a_model_file_without_the_interface_is_refused(tmp_path, timbre_model):
    text = tmp_path / "notes.ts"
    text.write_text("not a model")
    with pytest.raises(BadVariant, match="is not a TorchScript model"):
        load_chain(VariantConfig(name="m", chain=[{"torchscript": str(text)}]))
    with pytest.raises(BadVariant, match="cannot read"):
        load_chain(VariantConfig(name="m", chain=[{"torchscript": str(tmp_path / "absent.ts")}]))

    import torch

    class NoRate(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    scripted = tmp_path / "no-rate.ts"
    torch.jit.script(NoRate()).save(str(scripted))
    with pytest.raises(BadVariant, match="no integer `sr` attribute"):
        load_chain(VariantConfig(name="m", chain=[{"torchscript": str(scripted)}]))

    class WrongShape(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sr = 16000

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[0]

    wrong = tmp_path / "wrong-shape.ts"
    torch.jit.script(WrongShape()).save(str(wrong))
    chain = load_chain(VariantConfig(name="flat", chain=[{"torchscript": str(wrong)}]))
    with pytest.raises(BadVariant, match="pool.variants flat: the chain fails on audio: .*expected \\[1, channels"):
        check_chain(chain, RATE)


@pytest.mark.parametrize(
    "variant",
    [
        {"name": "Bad Name", "chain": [{"effect": "Gain"}]},
        {"name": "a--b", "chain": [{"effect": "Gain"}]},
        {"name": "a__b", "chain": [{"effect": "Gain"}]},
        {"name": "ok", "chain": []},
        {"name": "ok", "chain": [{"effect": "Gain", "torchscript": "m.ts"}]},
        {"name": "ok", "chain": [{"gain_db": 3}]},
        {"name": "ok", "chain": [{"torchscript": "m.ts", "method": "decode"}]},
    ],
)
def test_variant_settings_are_checked_when_the_config_loads(variant):
    with pytest.raises(ValidationError):
        VariantConfig(**variant)


def test_variant_names_are_distinct():
    with pytest.raises(ValidationError, match="repeated: muffled"):
        PoolConfig(dir="/tmp/p", variants=[lowpass(), lowpass(cutoff=400)])


def test_ids_patterns_and_fingerprints():
    parent = "0123456789abcdef-00003"
    assert clip_family(variant_clip_id(parent, "muffled")) == parent
    assert clip_family(parent) == parent
    variants = [lowpass("muffled", sources=["*/rain/*"]), lowpass("all")]
    assert [v.name for v in variants_for("file:///data/rain/a.wav", variants)] == ["muffled", "all"]
    assert [v.name for v in variants_for("file:///data/dogs/a.wav", variants)] == ["all"]
    same, other = load_chain(lowpass()), load_chain(lowpass(cutoff=400))
    assert variants_fingerprint("10:20", []) == "10:20"
    assert variants_fingerprint("10:20", [same]) == variants_fingerprint("10:20", [load_chain(lowpass())])
    assert variants_fingerprint("10:20", [same]) != variants_fingerprint("10:20", [other])
    assert variants_fingerprint("10:20", [same]).startswith("10:20|variants:")


def test_standardize_adds_each_variant_after_its_parent(tmp_path):
    source = write_audio(tmp_path / "src" / "rain.wav", noise(12.0, RATE, 0.2, seed=6), RATE)
    plain = write_audio(tmp_path / "src" / "plain.wav", noise(3.0, RATE, 0.2, seed=7), RATE)
    stage = Standardize(str(tmp_path / "pool"), RATE, 5.0, -70.0, [16000], [lowpass(sources=["*rain*"])])
    part = {
        "part": "p",
        "uris": [str(source), str(plain)],
        "fingerprints": ["a", "b"],
        "errors": None,
        "error_kinds": None,
        "members": None,
    }
    table = stage.process_part(part)
    rows = table.to_pylist()
    rain = [r for r in rows if r["source_uri"] == str(source)]
    assert [(r["chunk_index"], r["variant"]) for r in rain] == [(i, v) for i in range(3) for v in (None, "muffled")]
    for parent, variant in zip(rain[::2], rain[1::2]):
        assert variant["clip_id"] == variant_clip_id(parent["clip_id"], "muffled")
        assert variant["parent_clip_id"] == parent["clip_id"] and parent["parent_clip_id"] is None
        assert variant["source_id"] == parent["source_id"] and variant["start_s"] == parent["start_s"]
        assert json.loads(variant["variant_chain"])[0] == {"effect": "LowpassFilter", "cutoff_frequency_hz": 800.0}
        assert variant["lufs"] < parent["lufs"]
    assert all(r["variant"] is None for r in rows if r["source_uri"] == str(plain))

    audio = pq.read_table(PoolLayout(str(tmp_path / "pool")).audio("p").removeprefix("file://")).to_pylist()
    flac = {r["clip_id"]: r["flac"] for r in audio}
    parent_audio, _ = decode_flac(flac[rain[0]["clip_id"]])
    variant_audio, rate = decode_flac(flac[rain[1]["clip_id"]])
    assert rate == RATE and variant_audio.shape == parent_audio.shape
    high = 10 * np.log10(band_energy(variant_audio, RATE, 6000, 20000) / band_energy(parent_audio, RATE, 6000, 20000))
    assert high < -20
    # The same chain on the same source gives the same bytes.
    again = Standardize(str(tmp_path / "again"), RATE, 5.0, -70.0, [16000], [lowpass(sources=["*rain*"])])
    again.process_part(part)
    repeat = pq.read_table(PoolLayout(str(tmp_path / "again")).audio("p").removeprefix("file://")).to_pylist()
    assert {r["clip_id"]: r["flac"] for r in repeat} == flac


def test_a_sample_never_hears_a_clip_with_its_variant():
    parent, other = "aaaa-00000", "bbbb-00000"
    varied = variant_clip_id(parent, "muffled")
    matches = {
        "rain": ([parent, varied, other], np.array([0.9, 0.89, 0.5])),
        "rain on a roof": ([varied, parent, other], np.array([0.9, 0.89, 0.5])),
    }
    usable = {parent, varied, other}
    for seed in range(20):
        choices = choose_clips(["rain", "rain on a roof"], matches, seed, f"key{seed}", 2, True, 0.0, usable)
        picked = [c.clip_id for c in choices if isinstance(c, ConceptChoice)]
        assert len(picked) == 2
        assert len({clip_family(c) for c in picked}) == 2
        assert other in picked


def test_a_pool_grows_by_its_variants_and_redoes_only_the_sources_whose_chain_changed(
    tmp_path, tiny_models, ray_session
):
    import duckdb

    from pipelines.pool.run import run_pool
    from tests.test_pool_pipeline import make_config

    src = tmp_path / "src"
    write_audio(src / "rain" / "roof.wav", noise(11.0, 44100, 0.2, seed=8), 44100)
    write_audio(src / "dogs" / "bark.wav", noise(6.0, 22050, 0.2, seed=9), 22050)
    pool_dir = tmp_path / "pool"
    variants = [
        {
            "name": "muffled",
            "sources": ["*/rain/*"],
            "chain": [{"effect": "LowpassFilter", "cutoff_frequency_hz": 800}],
        },
        {"name": "voiced", "chain": [{"torchscript": tiny_models["timbre_torchscript"]}]},
    ]
    config = make_config(pool_dir, [f"{src}/*/*.wav"], tiny_models, variants=variants)
    first = run_pool(config)
    db = duckdb.connect()
    clips = f"read_parquet('{pool_dir}/clips/*.parquet')"
    embeddings = f"read_parquet('{pool_dir}/embeddings/*.parquet')"
    rows = db.execute(
        f"SELECT c.clip_id, c.parent_clip_id, c.variant, c.source_uri, e.clip_id IS NOT NULL "
        f"FROM {clips} c LEFT JOIN {embeddings} e USING (clip_id) ORDER BY c.clip_id"
    ).fetchall()
    cut = {r[0] for r in rows if r[2] is None}
    # roof.wav: 3 clips, each with 2 variants; bark.wav: 2 clips, each with 1.
    assert len(cut) == 5 and len(rows) == 5 + 3 * 2 + 2
    assert first["variant_clips_added"] == 8
    assert first["pool"]["variant_clips"] == {"muffled": 3, "voiced": 5}
    for clip_id, parent, variant, uri, embedded in rows:
        assert embedded
        if variant is not None:
            assert parent in cut and clip_id == variant_clip_id(parent, variant)
            assert variant == "voiced" or "/rain/" in uri
    assert first["index"]["size"] == len(rows)

    again = run_pool(config)
    assert again["files_processed"] == 0 and again["files_unchanged"] == 2

    variants[0]["chain"][0]["cutoff_frequency_hz"] = 400
    changed = run_pool(make_config(pool_dir, [f"{src}/*/*.wav"], tiny_models, variants=variants))
    assert changed["files_processed"] == 1 and changed["files_unchanged"] == 1
    chains = db.execute(
        f"SELECT variant_chain, count(*), count(DISTINCT clip_id) FROM {clips} WHERE variant = 'muffled' GROUP BY 1"
    ).fetchall()
    assert chains == [('[{"cutoff_frequency_hz":400,"effect":"LowpassFilter"}]', 3, 3)]
    assert db.execute(f"SELECT count(*) FROM {clips}").fetchone()[0] == len(rows)
    assert changed["index"]["size"] == len(rows)
