"""Shards read back with the webdataset library, byte-stable, and planned to a size target."""

import json

import pytest
import webdataset as wds

from stages.shards import plan_shards, shard_file, shard_id, tar_bytes, write_shard


def samples():
    return [
        (f"img-{i:03d}", {"jpg": bytes([i]) * (100 + i), "flac": b"fLaC" + bytes(50), "json": json.dumps({"i": i}).encode()})
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
