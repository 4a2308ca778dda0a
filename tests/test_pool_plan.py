"""Planning a pool run: what is new, unchanged, changed or retried, and which stored rows go stale;
removing stale rows and unfinished parts from disk."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.pool.parts import prune_stale, remove_unfinished_parts
from pipelines.pool.plan import group_parts, plan_work
from schemas import POOL_CLIPS, POOL_PARTS, make_table
from schemas.layout import PoolLayout
from stages.audio.mixing import ClipLocation, load_pool_clips
from stages.audio.standardize_stage import Standardize
from stages.io import storage
from stages.io.sources import SourceFile
from tests.helpers import noise, tone, write_audio


def stored(rows):
    uris, fingerprints, errors, parts = zip(*rows) if rows else ([], [], [], [])
    return pa.table(
        {
            "source_uri": pa.array(uris, pa.string()),
            "source_fingerprint": pa.array(fingerprints, pa.string()),
            "error": pa.array(errors, pa.string()),
            "part": pa.array(parts, pa.string()),
        }
    )


def test_new_unchanged_changed():
    existing = stored([("a", "1", None, "p1"), ("a", "1", None, "p1"), ("b", "1", None, "p1")])
    sources = [SourceFile("a", 10, "1"), SourceFile("b", 10, "2"), SourceFile("c", 10, "1")]
    plan = plan_work(sources, existing, retry_errors=False)
    assert [s.uri for s in plan.to_process] == ["b", "c"]
    assert plan.unchanged == 1
    assert plan.stale == {"p1": {"b"}}


def test_unlisted_sources_are_kept():
    plan = plan_work([SourceFile("new", 1, "1")], stored([("old", "1", None, "p1")]), retry_errors=False)
    assert [s.uri for s in plan.to_process] == ["new"]
    assert plan.stale == {}


def test_errors_are_retried_only_when_asked():
    existing = stored([("bad", "1", "bad: not decodable", "p1")])
    sources = [SourceFile("bad", 1, "1")]
    assert plan_work(sources, existing, retry_errors=False).to_process == []
    plan = plan_work(sources, existing, retry_errors=True)
    assert [s.uri for s in plan.to_process] == ["bad"]
    assert plan.stale == {"p1": {"bad"}}


def test_leftover_rows_of_an_older_version_are_stale():
    # An interrupted replacement leaves both versions stored; the current one stays.
    existing = stored([("a", "old", None, "p1"), ("a", "new", None, "p2")])
    plan = plan_work([SourceFile("a", 1, "new")], existing, retry_errors=False)
    assert plan.to_process == []
    assert plan.stale == {"p1": {"a"}}


def test_parts_are_deterministic_and_sized():
    sources = [SourceFile(f"s{i:02d}", 1, str(i)) for i in range(10)]
    parts = group_parts(list(reversed(sources)), files_per_part=4)
    assert parts.schema.equals(POOL_PARTS, check_metadata=False)
    assert [len(u) for u in parts.column("uris").to_pylist()] == [4, 4, 2]
    assert parts.column("uris").to_pylist()[0] == ["s00", "s01", "s02", "s03"]
    assert group_parts(sources, 4).column("part").to_pylist() == parts.column("part").to_pylist()
    changed = [SourceFile("s00", 1, "changed"), *sources[1:]]
    assert group_parts(changed, 4).column("part").to_pylist()[0] != parts.column("part").to_pylist()[0]


def test_pruning_repacks_each_mix_rate_and_an_interrupted_prune_is_finished_by_the_next(tmp_path, monkeypatch):
    """A part that loses a source keeps its other clips' audio at every mix rate, now at new offsets
    in a smaller pack; a prune killed between pack and clips file leaves old offsets that no longer
    match the pack, and the next prune still finds the kept clips (by name). A part emptied, or one
    without a clips file, leaves no pack."""
    rates = [16000, 8000]
    paths = PoolLayout(str(tmp_path / "pool"))
    uris = [
        str(write_audio(tmp_path / "a.wav", noise(7.0, 16000, 0.1, seed=1), 16000)),
        str(write_audio(tmp_path / "b.wav", tone(4.0, 16000, 300.0), 16000)),
        str(write_audio(tmp_path / "c.wav", noise(3.0, 16000, 0.2, seed=2), 16000)),
    ]
    rows = Standardize(paths.root, 16000, 5.0, -70.0, rates).process_part(
        {"part": "p", "uris": uris, "fingerprints": None, "errors": None}
    )
    storage.write_parquet(paths.clips("p"), make_table(POOL_CLIPS, rows.select(POOL_CLIPS.names)))

    def audio(rate: int) -> dict:
        clips = storage.read_parquet(paths.clips("p")).to_pylist()
        where = [
            ClipLocation(c["clip_id"], "p", at["audio_offset"], at["audio_bytes"])
            for c in clips
            for at in c["loudness_at_rates"]
            if at["sample_rate"] == rate
        ]
        return load_pool_clips(paths.root, where, rate)[0]

    before = {rate: audio(rate) for rate in rates}
    assert [len(a) for a in before.values()] == [4, 4]
    packs = {rate: storage.read_bytes(paths.mix_audio("p", rate)) for rate in rates}
    assert prune_stale(paths, {"p": {uris[1]}}, rates) == 1
    for rate in rates:
        kept = audio(rate)
        assert len(kept) == 3 and all(np.array_equal(a, before[rate][clip]) for clip, a in kept.items())
        assert len(storage.read_bytes(paths.mix_audio("p", rate))) < len(packs[rate])

    # Killed after rewriting the packs, before the clips file.
    write_parquet = storage.write_parquet
    monkeypatch.setattr(
        storage, "write_parquet", lambda url, table: None if url == paths.clips("p") else write_parquet(url, table)
    )
    prune_stale(paths, {"p": {uris[0]}}, rates)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="pool part p: .*the pool changed after these locations were read"):
        audio(16000)
    prune_stale(paths, {"p": {uris[0]}}, rates)
    clips = storage.read_parquet(paths.clips("p"))
    assert pc.all(pc.equal(clips.column("source_uri"), uris[2])).as_py()
    for rate in rates:
        (clip,) = audio(rate).items()
        assert np.array_equal(clip[1], before[rate][clip[0]])

    storage.write_bytes(paths.mix_audio("unfinished", 8000), storage.read_bytes(paths.mix_audio("p", 8000)))
    assert remove_unfinished_parts(paths, rates) == [paths.mix_audio("unfinished", 8000)]
    prune_stale(paths, {"p": {uris[2]}}, rates)
    assert not any(
        storage.exists(url) for url in [paths.clips("p"), paths.audio("p"), *(paths.mix_audio("p", r) for r in rates)]
    )
