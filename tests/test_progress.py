"""Pending units and progress lines: a rerun does only the units without their completion marker,
and a long phase logs N of M done with its rate, about every twentieth of the work and at the end."""

import logging

from pipelines.progress import PROGRESS_LINES, Progress, pending


def test_pending_keeps_the_units_without_a_marker_in_their_order_and_says_how_many(caplog):
    marked = {"000001", "000003"}
    with caplog.at_level(logging.INFO, logger="pipelines.progress"):
        todo = pending("scenes qwen", ["000000", "000001", "000002", "000003"], marked.__contains__)
    assert todo == ["000000", "000002"]
    assert caplog.messages == ["scenes qwen: 2 of 4 chunks to do, 2 already written"]


def test_progress_logs_about_a_twentieth_of_the_work_at_a_time_and_the_last_unit(caplog):
    total = 10 * PROGRESS_LINES + 3
    with caplog.at_level(logging.INFO, logger="pipelines.progress"):
        progress = Progress("shards", total, "shards")
        for _ in range(total):
            progress.advance()
    lines = caplog.messages
    assert lines[0].startswith("shards: 1/203 shards done, ") and lines[0].endswith(" shards/s")
    assert lines[-1].startswith(f"shards: {total}/{total} shards done")
    assert PROGRESS_LINES <= len(lines) <= PROGRESS_LINES + 2


def test_progress_of_every_unit_counts_what_the_rate_is_of(caplog):
    with caplog.at_level(logging.INFO, logger="pipelines.progress"):
        progress = Progress("scenes qwen", 3, "chunks", counted="images", every_unit=True)
        for chunk, images in [("000002", 64), ("000000", 64), ("000001", 20)]:
            progress.advance(counted=images, note=chunk)
    assert [line.split(" so far")[0] for line in caplog.messages] == [
        "scenes qwen: 1/3 chunks done (000002); 64 images",
        "scenes qwen: 2/3 chunks done (000000); 128 images",
        "scenes qwen: 3/3 chunks done (000001); 148 images",
    ]
    assert all(line.endswith(" images/s") for line in caplog.messages)
