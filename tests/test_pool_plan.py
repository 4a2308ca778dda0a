"""Planning a pool run: what is new, unchanged, changed or retried, and which stored rows go stale."""

import pyarrow as pa

from pipelines.pool import group_parts, plan_work
from schemas import POOL_PARTS
from stages.storage import SourceFile


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
