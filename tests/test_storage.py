"""Storage helpers and model staging on fsspec's in-memory filesystem: remote-model copies are made
once, keyed by the files' fingerprints, and stay whole when two loaders race. Local writes are
atomic: one killed before its rename leaves the old file, and a temporary that nothing lists."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import fsspec.implementations.memory
import numpy as np
import pytest

from schemas.config import ClapConfig
from stages.embed.clap import clap_identity, load_clap
from stages.io.model_files import is_remote, model_name, stage_model
from stages.vlm.vllm_stage import vllm_model_source


@pytest.fixture
def memory_model():
    """A model folder at a fresh memory:// URL, with a nested file, as HF checkpoints have."""
    fs = fsspec.filesystem("memory")
    root = f"/models-{uuid.uuid4().hex}/clap"
    files = {
        "config.json": b'{"projection_dim": 512}',
        "model.safetensors": b"\x00" * 4096,
        "tokenizer/vocab.json": b"{}",
    }
    for name, data in files.items():
        fs.pipe(f"{root}/{name}", data)
    yield f"memory://{root}", files
    fs.rm(root.split("/clap")[0], recursive=True)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_remote_folder_is_copied_whole_once(memory_model, tmp_path):
    url, files = memory_model
    staged = Path(stage_model(url, tmp_path))
    assert staged.parent == tmp_path
    assert tree(staged) == files
    marker = (staged / "model.safetensors").stat().st_mtime_ns
    assert stage_model(url + "/", tmp_path) == str(staged)
    assert (staged / "model.safetensors").stat().st_mtime_ns == marker
    assert [p.name for p in tmp_path.iterdir()] == [staged.name]


def test_replaced_checkpoint_is_staged_again(memory_model, tmp_path):
    url, files = memory_model
    first = stage_model(url, tmp_path)
    fsspec.filesystem("memory").pipe(url.removeprefix("memory://") + "/model.safetensors", b"\x01" * 100)
    second = stage_model(url, tmp_path)
    assert second != first
    assert tree(Path(second))["model.safetensors"] == b"\x01" * 100
    assert tree(Path(first))["model.safetensors"] == files["model.safetensors"]


def test_single_file_keeps_its_name(memory_model, tmp_path):
    url, files = memory_model
    staged = Path(stage_model(f"{url}/model.safetensors", tmp_path))
    assert staged.name == "model.safetensors"
    assert staged.read_bytes() == files["model.safetensors"]


def test_local_paths_and_hub_ids_are_not_copied(tmp_path):
    assert stage_model("laion/clap-htsat-unfused", tmp_path / "cache") == "laion/clap-htsat-unfused"
    assert stage_model(str(tmp_path), tmp_path / "cache") == str(tmp_path)
    assert stage_model(f"file://{tmp_path}", tmp_path / "cache") == str(tmp_path)
    assert not (tmp_path / "cache").exists()
    assert not is_remote("laion/clap-htsat-unfused") and not is_remote(f"file://{tmp_path}")
    assert is_remote("memory://x/y") and is_remote("s3://bucket/model")


def test_missing_remote_model_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        stage_model(f"memory://nothing-{uuid.uuid4().hex}/model", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_model_name_is_the_same_for_a_folder_and_its_bucket_copy(tmp_path):
    folder = tmp_path / "clap-transformers"
    folder.mkdir()
    assert model_name(str(folder)) == model_name("s3://bucket/models/clap-transformers/") == "clap-transformers"
    assert model_name("laion/larger_clap_general") == "laion/larger_clap_general"


def test_racing_stagings_both_get_the_complete_copy(memory_model, tmp_path, monkeypatch):
    """Both loaders finish downloading before either renames, so one rename must lose."""
    url, files = memory_model
    barrier = threading.Barrier(2)
    real_rename = os.rename
    renames = []

    def rename_after_both_downloaded(source, target):
        renames.append(source)
        barrier.wait(timeout=30)
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename_after_both_downloaded)
    # memory:// hands every reader the same file object, seeked to 0, so two threads reading one
    # file at once can each read part of it. Stores over a network, and Ray's workers (separate
    # processes), never share a reader; the race under test is the rename, after both downloads.
    download_lock = threading.Lock()
    real_get_file = fsspec.implementations.memory.MemoryFileSystem.get_file

    def one_download_at_a_time(self, *args, **kwargs):
        with download_lock:
            return real_get_file(self, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "get_file", one_download_at_a_time)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: stage_model(url, tmp_path), range(2)))
    assert len(renames) == 2 and renames[0] != renames[1]
    assert paths[0] == paths[1]
    assert tree(Path(paths[0])) == files
    # The loser's temporary copy is removed; only the staged model remains.
    assert [p.name for p in tmp_path.iterdir()] == [Path(paths[0]).name]


def test_vllm_model_source():
    assert vllm_model_source("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert vllm_model_source("s3://bucket/qwen") == "s3://bucket/qwen"
    assert vllm_model_source("file:///models/qwen") == "/models/qwen"
    with pytest.raises(ValueError, match="memory://bucket/qwen"):
        vllm_model_source("memory://bucket/qwen")


@pytest.fixture(scope="module")
def models_in_memory(tiny_models):
    """The tiny CLAP checkpoints copied to memory://, a filesystem no model library can read."""
    fs = fsspec.filesystem("memory")
    root = f"/models-{uuid.uuid4().hex}"
    for name in ("clap_transformers", "clap_laion_checkpoint", "clap_laion_text_backbones"):
        local = Path(tiny_models[name])
        fs.put(str(local), f"{root}/{name}/{local.name}", recursive=local.is_dir())
    yield {
        name: f"memory://{root}/{name}/{Path(tiny_models[name]).name}"
        for name in ("clap_transformers", "clap_laion_checkpoint", "clap_laion_text_backbones")
    }
    fs.rm(root, recursive=True)


@pytest.mark.parametrize("backend", ["transformers", "laion_clap"])
def test_clap_loads_from_a_remote_url(backend, tiny_models, models_in_memory, tmp_path, monkeypatch):
    monkeypatch.setenv("SONIFY_MODEL_CACHE", str(tmp_path))

    def config(models):
        if backend == "transformers":
            return ClapConfig(backend=backend, model=models["clap_transformers"])
        return ClapConfig(
            backend=backend,
            model=models["clap_laion_checkpoint"],
            text_backbones_dir=models["clap_laion_text_backbones"],
        )

    local, remote = config(tiny_models), config(models_in_memory)
    assert clap_identity(remote) == clap_identity(local)
    texts = ["the sound of a dog barking", "rain falling on a tin roof"]
    assert np.allclose(load_clap(remote).embed_text(texts), load_clap(local).embed_text(texts), atol=1e-6)
    # The model, and for laion-clap its text backbones, were staged into the configured cache.
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == (1 if backend == "transformers" else 2)


def test_a_write_killed_before_its_rename_leaves_the_old_file_and_a_temporary_that_is_never_listed(
    tmp_path, monkeypatch
):
    from fsspec.implementations.local import LocalFileSystem

    from stages.io import storage

    target = tmp_path / "manifest" / "000001.parquet"
    storage.write_bytes(str(target), b"complete")

    class Killed(BaseException):
        pass

    def killed(*_args, **_kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(LocalFileSystem, "mv", killed)
        with pytest.raises(Killed):
            storage.write_bytes(str(target), b"the new bytes")
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(storage.TEMPORARY_PREFIX)]
    assert [p.read_bytes() for p in leftovers] == [b"the new bytes"]
    assert target.read_bytes() == b"complete"
    assert storage.list_files(str(target.parent), ".parquet") == [str(target)]

    (target.parent / ".tmp-a user's own file").write_text("kept")
    assert storage.remove_temporaries([str(tmp_path), str(target.parent), str(tmp_path / "absent")]) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".tmp-a user's own file", "000001.parquet"]
    storage.write_bytes(str(target), b"the new bytes")
    assert target.read_bytes() == b"the new bytes"


def test_near_ranges_coalesce_and_far_ones_stay_apart():
    from stages.io.storage import COALESCE_GAP_BYTES, coalesce_ranges

    assert coalesce_ranges([]) == []
    assert coalesce_ranges([(9000, 100), (0, 512), (512, 100)]) == [(0, 612), (9000, 100)]
    assert coalesce_ranges([(0, 100), (100 + COALESCE_GAP_BYTES, 10)]) == [(0, 110 + COALESCE_GAP_BYTES)]
    assert coalesce_ranges([(0, 100), (101 + COALESCE_GAP_BYTES, 10)]) == [(0, 100), (101 + COALESCE_GAP_BYTES, 10)]
    # Overlapping and repeated ranges are read once.
    assert coalesce_ranges([(0, 300), (100, 50), (100, 50)]) == [(0, 300)]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_read_ranges_asks_the_file_system_for_the_coalesced_ranges_only(where, tmp_path, monkeypatch):
    """Each range's bytes in the order asked; the file system is asked once per coalesced range and
    returns exactly those bytes (no read-ahead), whether the file is local or in memory://."""
    from stages.io import storage

    fs_class = fsspec.get_filesystem_class("file" if where == "local" else "memory")
    url = str(tmp_path / "data.bin") if where == "local" else f"memory://ranges-{uuid.uuid4().hex}/data.bin"
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    storage.write_bytes(url, data)
    asked: list[tuple[int, int, int]] = []
    cat_file = fs_class.cat_file

    def recorded(self, path, start=None, end=None, **kwargs):
        out = cat_file(self, path, start, end, **kwargs)
        asked.append((start, end, len(out)))
        return out

    monkeypatch.setattr(fs_class, "cat_file", recorded)
    ranges = [(50_000, 1000), (10, 90), (51_500, 200), (0, 5)]
    assert storage.read_ranges(url, ranges) == [data[o : o + n] for o, n in ranges]
    assert asked == [(0, 100, 100), (50_000, 51_700, 1700)]
    asked.clear()
    assert storage.read_ranges(url, [(0, len(data))]) == [data] and asked == [(0, len(data), len(data))]
    with pytest.raises(ValueError, match="ends before byte 100010"):
        storage.read_ranges(url, [(99_990, 20)])


def test_a_local_name_that_is_not_utf8_is_stored_as_a_file_url_and_opens_the_same_bytes(tmp_path):
    import pyarrow as pa

    from stages.io import storage
    from stages.io.sources import expand_sources

    latin1 = os.fsencode(tmp_path) + b"/caf\xe9 50%.wav"
    with open(latin1, "wb") as handle:
        handle.write(b"the Latin-1 file")
    (tmp_path / "plain caf%E9.wav").write_bytes(b"the plain file")
    files, _ = expand_sources([str(tmp_path / "*.wav")])
    by_content = {storage.read_bytes(f.uri): f.uri for f in files}
    assert set(by_content) == {b"the Latin-1 file", b"the plain file"}
    stored = by_content[b"the Latin-1 file"]
    # Storable (Arrow strings are UTF-8), and the bytes of the name come back whole.
    assert pa.array([f.uri for f in files]).to_pylist() == [f.uri for f in files]
    assert stored.startswith("file://") and "%E9%2050%25.wav" in stored
    assert os.fsencode(storage.filesystem(stored)[1]) == latin1
    assert storage.exists(stored) and storage.sha256_of(stored)
    # A valid name is stored as it is, even one that looks percent-encoded.
    assert by_content[b"the plain file"] == str(tmp_path / "plain caf%E9.wav")
    assert storage.full_url(*storage.filesystem(stored)) == stored
