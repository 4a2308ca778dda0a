"""Rows grouped until complete: written as soon as a group is whole, whatever order rows come in;
a group left short, or given too many rows, is an error."""

import numpy as np
import pyarrow as pa
import pytest

from pipelines.grouped_writer import GroupedWriter, UnfinishedGroups


def writer(sizes: dict[str, int], log: list) -> GroupedWriter:
    def write(group, rows):
        log.append((group, sorted(rows.column("n").to_pylist())))
        return rows.num_rows

    return GroupedWriter(
        "part",
        list(sizes),
        group_of=lambda batch: batch.column("g").to_numpy(zero_copy_only=False),
        expected_rows=lambda group, rows: sizes[group],
        write=write,
    )


def rows(pairs):
    return pa.table({"g": [g for g, _ in pairs], "n": [n for _, n in pairs]})


def test_groups_are_written_as_soon_as_they_are_whole():
    log = []
    grouped = writer({"a": 3, "b": 2, "c": 1}, log)
    grouped.add(rows([("a", 1), ("b", 1)]))
    assert log == []
    grouped.add(rows([("b", 2), ("a", 2), ("c", 1)]))
    assert log == [("b", [1, 2]), ("c", [1])]
    grouped.consume([rows([("a", 3)])])
    assert log[-1] == ("a", [1, 2, 3])
    assert grouped.unfinished() == [] and grouped.units == 6


def test_every_order_of_rows_gives_the_same_groups():
    pairs = [(g, n) for g, size in (("a", 4), ("b", 3), ("c", 5)) for n in range(size)]
    for seed in range(10):
        order = np.random.default_rng(seed).permutation(len(pairs))
        log = []
        batches = [rows([pairs[i] for i in order[start : start + 3]]) for start in range(0, len(order), 3)]
        writer({"a": 4, "b": 3, "c": 5}, log).consume(batches)
        assert sorted(log) == [("a", [0, 1, 2, 3]), ("b", [0, 1, 2]), ("c", [0, 1, 2, 3, 4])]


def test_a_group_left_short_is_an_error_after_every_batch_is_drained():
    log = []
    grouped = writer({"a": 2, "b": 2}, log)
    with pytest.raises(UnfinishedGroups, match=r"\['a'\] did not receive all their rows"):
        grouped.consume([rows([("a", 1)]), rows([("b", 1), ("b", 2)])])
    assert log == [("b", [1, 2])]


def test_rows_of_an_unknown_group_or_too_many_rows_are_errors():
    with pytest.raises(UnfinishedGroups, match="which this run does not write"):
        writer({"a": 1}, []).add(rows([("z", 1)]))
    with pytest.raises(UnfinishedGroups, match="3 rows, more than its 2"):
        writer({"a": 2}, []).add(rows([("a", 1), ("a", 2), ("a", 3)]))
