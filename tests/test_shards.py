"""Shards read back with the webdataset library, byte-stable, and planned to a size target."""

import json

import pytest
import webdataset as wds

from schemas.layout import shard_file, shard_id
from stages.shards import plan_shards, tar_bytes, write_shard


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
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(members[extension]), 0, 0o444, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(members[extension]))
    assert data == buffer.getvalue()
