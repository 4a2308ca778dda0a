"""Listing Parquet rows and tar members as audio sources, and reading their bytes back. Tables
are written with pyarrow and tars with tarfile, and bytes are compared with what was written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.pool.plan import group_parts, plan_work
from stages.io.source_reader import SourceReader
from stages.io.sources import ParquetLayout, SourceFile, expand_audio_sources

HF_AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
DEFAULT = ParquetLayout("audio", None)


def clip_bytes(i: int) -> bytes:
    return f"RIFF-clip-{i:03d}".encode() * (i + 1)


def write_hf_parquet(path: Path, count: int, row_group_size: int = 4) -> None:
    table = pa.table(
        {
            "audio": pa.array([{"bytes": clip_bytes(i), "path": f"clip{i:03d}.wav"} for i in range(count)], HF_AUDIO),
            "sound_id": [f"s{i:03d}" for i in range(count)],
            "label": ["dog"] * count,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_all(sources) -> dict[str, bytes]:
    reader = SourceReader()
    return {s.uri: reader.read(s.uri, s.member) for s in sources if s.error is None}


def test_every_parquet_row_is_a_source_named_by_its_row_number(tmp_path):
    write_hf_parquet(tmp_path / "train.parquet", 10)
    sources, _ = expand_audio_sources([str(tmp_path / "*.parquet")], DEFAULT)
    assert [s.uri for s in sources] == [f"{tmp_path}/train.parquet#{i}" for i in range(10)]
    assert len({s.fingerprint for s in sources}) == 1 and sources[0].fingerprint.startswith("size:")
    assert [(s.member.row_group, s.member.row_in_group) for s in sources][3:6] == [(0, 3), (1, 0), (1, 1)]
    assert list(read_all(sources).values()) == [clip_bytes(i) for i in range(10)]


@pytest.mark.parametrize("id_column, first", [("sound_id", "s000"), ("audio.path", "clip000.wav")])
def test_an_id_column_names_the_rows(tmp_path, id_column, first):
    write_hf_parquet(tmp_path / "train.parquet", 6)
    sources, _ = expand_audio_sources([str(tmp_path / "train.parquet")], ParquetLayout("audio", id_column))
    assert sources[0].uri == f"{tmp_path}/train.parquet#{first}"
    assert read_all(sources)[sources[5].uri] == clip_bytes(5)


def test_a_plain_binary_column_and_rows_without_bytes(tmp_path):
    pq.write_table(pa.table({"flac": pa.array([b"abc", None, b"def"], pa.binary())}), tmp_path / "plain.parquet")
    pq.write_table(
        pa.table({"audio": pa.array([{"bytes": None, "path": "/elsewhere/a.wav"}], HF_AUDIO)}),
        tmp_path / "paths.parquet",
    )
    plain, _ = expand_audio_sources([str(tmp_path / "plain.parquet")], ParquetLayout("flac", None))
    reader = SourceReader()
    assert reader.read(plain[0].uri, plain[0].member) == b"abc" and reader.read(plain[2].uri, plain[2].member) == b"def"
    with pytest.raises(ValueError, match=r"^no audio bytes in column 'flac'$"):
        reader.read(plain[1].uri, plain[1].member)
    (only_path,) = expand_audio_sources([str(tmp_path / "paths.parquet")], DEFAULT)[0]
    with pytest.raises(
        ValueError, match=r"^no audio bytes in column 'audio' \(the row names only the path '/elsewhere/a.wav'\)$"
    ) as raised:
        reader.read(only_path.uri, only_path.member)
    assert raised.value.kind == "empty"


def test_unusable_parquet_files_are_one_error_each(tmp_path):
    pq.write_table(pa.table({"sound": pa.array([b"x"])}), tmp_path / "other column.parquet")
    pq.write_table(pa.table({"audio": pa.array([1, 2])}), tmp_path / "numbers.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    sources, _ = expand_audio_sources([str(tmp_path / "*.parquet")], DEFAULT)
    errors = {Path(s.uri).name: s.error for s in sources}
    assert errors == {
        "broken.parquet": errors["broken.parquet"],
        "numbers.parquet": "container: the Parquet column 'audio' is int64, not binary or a struct with binary `bytes`",
        "other column.parquet": (
            "container: the Parquet file has no column 'audio' (its columns: sound); set pool.parquet.audio_column"
        ),
    }
    assert errors["broken.parquet"].startswith(f"cannot read {tmp_path}/broken.parquet as Parquet: ")
    kinds = {Path(s.uri).name: s.error_kind for s in sources}
    assert kinds == {
        "broken.parquet": "unreadable",
        "numbers.parquet": "bad_container",
        "other column.parquet": "bad_container",
    }


def test_repeated_and_null_ids_are_error_rows_and_the_other_rows_stay(tmp_path):
    table = pa.table({"audio": pa.array([b"a", b"b", b"c", b"d"]), "id": ["x", "y", None, "x"]})
    pq.write_table(table, tmp_path / "ids.parquet")
    sources, _ = expand_audio_sources([str(tmp_path / "ids.parquet")], ParquetLayout("audio", "id"))
    by_uri = {s.uri.split("#", 1)[1]: s.error for s in sources}
    assert by_uri == {
        "x (row 0)": "container: 2 rows share this 'id'; ids must be unique",
        "y": None,
        "row 2 (null id)": "container: row 2 has a null 'id'; ids must be set and unique",
        "x (row 3)": "container: 2 rows share this 'id'; ids must be unique",
    }
    assert [s.error_kind for s in sources] == ["bad_container", None, "bad_container", "bad_container"]


def test_audio_members_of_a_tar_are_sources_and_metadata_is_not(tmp_path):
    write_tar(
        tmp_path / "shard-000.tar",
        [
            ("a/k1.flac", b"flac-bytes-1"),
            ("a/k1.json", b"{}"),
            ("k2.m4a", b"m4a-bytes" * 300),
            ("k2.txt", b"hi"),
            ("k3.OPUS", b"opus"),
        ],
    )
    sources, _ = expand_audio_sources([str(tmp_path / "shard-000.tar")], DEFAULT)
    assert [s.uri.rsplit("#", 1)[1] for s in sources] == ["a/k1.flac", "k2.m4a", "k3.OPUS"]
    assert [s.size for s in sources] == [12, 2700, 4]
    assert list(read_all(sources).values()) == [b"flac-bytes-1", b"m4a-bytes" * 300, b"opus"]


def test_damaged_and_ambiguous_tars(tmp_path):
    write_tar(tmp_path / "twice.tar", [("k.flac", b"one"), ("k.flac", b"two"), ("j.wav", b"three")])
    write_tar(tmp_path / "whole.tar", [(f"k{i}.wav", bytes(3000)) for i in range(4)])
    (tmp_path / "cut.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:7000])
    (tmp_path / "packed.tar.gz").write_bytes(b"\x1f\x8b")
    write_tar(tmp_path / "images.tar", [("k.jpg", b"jpeg"), ("k.json", b"{}")])
    names = ["twice.tar", "cut.tar", "packed.tar.gz", "images.tar"]
    sources, _ = expand_audio_sources([str(tmp_path / name) for name in names], DEFAULT)
    found = {s.uri.rsplit("/", 1)[1]: s.error for s in sources}
    assert found["twice.tar#j.wav"] is None
    assert [s.error for s in sources if s.uri.endswith("twice.tar#k.flac")] == [
        "container: the tar holds 2 members named 'k.flac'"
    ]
    # The members whose headers precede the damage stay sources; the tar itself gets the error.
    assert {u for u in found if u.startswith("cut.tar#")} == {"cut.tar#k0.wav", "cut.tar#k1.wav"}
    assert found["cut.tar"].startswith(f"cannot read {tmp_path}/cut.tar as a tar past 2 audio members: ")
    assert found["packed.tar.gz"].startswith("container: a compressed tar")
    assert found["images.tar"] == "container: the tar holds no audio members (other members: 1 jpg, 1 json)"
    kinds = {s.uri.rsplit("/", 1)[1]: s.error_kind for s in sources}
    assert (
        kinds["twice.tar#j.wav"] is None
        and kinds["twice.tar#k.flac"] == "bad_container"
        and kinds["cut.tar"] == "unreadable"
    )
    assert kinds["packed.tar.gz"] == kinds["images.tar"] == "bad_container"


def test_parts_keep_a_containers_rows_together_in_stored_order(tmp_path):
    write_hf_parquet(tmp_path / "b.parquet", 12)
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "c.wav").write_bytes(b"y")
    sources, _ = expand_audio_sources([str(tmp_path / "*")], DEFAULT)
    parts = group_parts(list(reversed(sources)), files_per_part=5).to_pylist()
    uris = [[u.rsplit("/", 1)[1] for u in p["uris"]] for p in parts]
    # Row 10 sorts before row 2 as a string, yet parts follow the file's order.
    assert uris == [
        ["a.wav", *(f"b.parquet#{i}" for i in range(4))],
        [f"b.parquet#{i}" for i in range(4, 9)],
        ["b.parquet#9", "b.parquet#10", "b.parquet#11", "c.wav"],
    ]
    assert parts[0]["members"][0] is None and parts[0]["members"][1]["row_in_group"] == 0
    assert parts[1]["members"][0] == {
        "container": f"{tmp_path}/b.parquet",
        "kind": "parquet",
        "key": "4",
        "column": "audio",
        "row_group": 1,
        "row_in_group": 0,
        "data_offset": None,
        "data_size": None,
    }


def test_a_container_that_failed_once_and_now_lists_rows_leaves_no_error_row(tmp_path):
    write_hf_parquet(tmp_path / "t.parquet", 2)
    sources, _ = expand_audio_sources([str(tmp_path / "t.parquet")], DEFAULT)
    container = f"{tmp_path}/t.parquet"
    stored = pa.table(
        {
            "source_uri": [container],
            "source_fingerprint": ["size:1:mtime:1"],
            "error": [f"{container}: cannot read {container} as Parquet: ArrowInvalid"],
            "part": ["p-old"],
        }
    )
    plan = plan_work(sources, stored, retry_errors=False)
    assert [s.uri for s in plan.to_process] == [f"{container}#0", f"{container}#1"]
    assert plan.stale == {"p-old": {container}}
    # While it still fails it stays listed under its own URL, and its error row stays current.
    failing = plan_work(
        [*expand_audio_sources([str(tmp_path / "missing.parquet")], DEFAULT)[0]], stored, retry_errors=False
    )
    assert failing.stale == {}


def test_a_rewritten_container_is_read_again_whole_and_its_old_rows_go_stale(tmp_path):
    write_hf_parquet(tmp_path / "t.parquet", 3)
    sources, _ = expand_audio_sources([str(tmp_path / "t.parquet")], DEFAULT)
    stored = pa.table(
        {
            "source_uri": [s.uri for s in sources],
            "source_fingerprint": [s.fingerprint for s in sources],
            "error": pa.array([None] * 3, pa.string()),
            "part": ["p-old"] * 3,
        }
    )
    assert plan_work(sources, stored, retry_errors=False).to_process == []
    rewritten = [SourceFile(s.uri, s.size, "etag:new", None, s.member) for s in sources]
    plan = plan_work(rewritten, stored, retry_errors=False)
    assert [s.uri for s in plan.to_process] == [s.uri for s in sources]
    assert plan.stale == {"p-old": {s.uri for s in sources}}


def test_a_tar_member_named_in_latin1_is_a_source_under_a_storable_name(tmp_path):
    latin1 = b"caf\xe9.wav".decode("utf-8", "surrogateescape")
    write_tar(tmp_path / "shard.tar", [(latin1, b"latin-1 member"), ("plain.wav", b"plain member")])
    sources, _ = expand_audio_sources([str(tmp_path / "shard.tar")], DEFAULT)
    assert [s.uri for s in sources] == [f"{tmp_path}/shard.tar#caf%E9.wav", f"{tmp_path}/shard.tar#plain.wav"]
    assert list(read_all(sources).values()) == [b"latin-1 member", b"plain member"]
    assert group_parts(sources, 1).num_rows == 2
