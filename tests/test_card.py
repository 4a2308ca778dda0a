"""The dataset card: its front matter as Hugging Face `datasets` parses it, the splits it lists, and
the user's own README.md, which a run never overwrites."""

from __future__ import annotations

import pytest
import yaml
from datasets import Features

from pipelines.config import validate_config
from pipelines.sonify.checks import SonifyError, check_same_run
from schemas.layout import SonifyLayout
from stages.pairing.card import data_files, front_matter, sample_features


def config(tmp_path, **sonify):
    return validate_config(
        {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {"clap": {"model": "unused"}, "vlm": [{"name": "given", "backend": "provided", "path": "/x"}]},
            "sonify": {"images": ["/unused/*.jpg"], "out": str(tmp_path / "out"), **sonify},
        }
    )


def test_the_features_parse_as_datasets_features_of_every_member():
    features = Features._from_yaml_list(sample_features("webp", {}))
    assert list(features) == ["__key__", "__url__", "webp", "flac", "json"]
    assert type(features["webp"]).__name__ == "Image" and type(features["flac"]).__name__ == "Audio"
    row = features["json"]
    assert "error_kind" not in row and "dropped" not in row
    assert row["split"].dtype == "string" and row["width"].dtype == "int32"
    assert row["concepts"].feature["cosine"].dtype == "float64"
    # Shards that mix image formats have no one image member to declare.
    assert [f["name"] for f in sample_features(None, {})] == ["__key__", "__url__", "flac", "json"]
    # Each embedding a fixed-length float32 list, named after its npy member.
    embedded = Features._from_yaml_list(sample_features("jpg", {"clap_audio": {"dim": 512}, "ast": {"dim": 768}}))
    assert list(embedded)[-2:] == ["clap_audio.npy", "ast.npy"]
    assert embedded["ast.npy"].length == 768 and embedded["ast.npy"].feature.dtype == "float32"


def test_only_splits_with_samples_are_listed(tmp_path):
    assert data_files({None: 3}) == [{"split": "train", "path": "shards/*.tar"}]
    assert data_files({"train": 5, "validation": 0, "test": 1}) == [
        {"split": "train", "path": "shards/train-*.tar"},
        {"split": "test", "path": "shards/test-*.tar"},
    ]
    cfg = config(tmp_path, splits={"train": 0.9, "test": 0.1})
    summary = {"samples": 4, "splits": {"samples": {"train": 4, "test": 0}}}
    matter = yaml.safe_load(yaml.safe_dump(front_matter(cfg, summary, ["cc0-1.0"])))
    assert matter["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "shards/train-*.tar"}]}
    ]
    assert matter["license"] == ["cc0-1.0"]


def test_a_readme_that_no_run_wrote_is_refused_before_any_work(tmp_path):
    layout = SonifyLayout(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("# my notes\n")
    with pytest.raises(SonifyError, match="README.md that no sonify run wrote"):
        check_same_run(config(tmp_path), layout)
    assert (tmp_path / "out" / "README.md").read_text() == "# my notes\n"
