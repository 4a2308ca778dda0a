"""Rows grouped until complete: the one writer behind every "write a unit of work when all its rows
are in, completion marker last" of the pipelines (pool parts, sonify chunks)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable

import numpy as np
import pyarrow as pa

from pipelines.progress import Progress


class UnfinishedGroups(RuntimeError):
    """Every batch was drained, and some groups still miss rows: a stage lost or added rows."""


class GroupedWriter:
    """Gathers rows that arrive in any order, grouped by `group_of` (the group key of every row of
    a batch), and calls `write(group, rows)` as soon as a group holds all its rows: as many as
    `expected_rows(group, some of its rows)` says. `write` writes the group's files, its completion
    marker last, and returns how many units (clips, images) the group holds, for the logged rate.
    Every group written is logged (pipelines.progress), as `group_unit` N of M."""

    def __init__(
        self,
        what: str,
        groups: Iterable[Hashable],
        group_of: Callable[[pa.Table], np.ndarray | list],
        expected_rows: Callable[[Hashable, pa.Table], int],
        write: Callable[[Hashable, pa.Table], int],
        unit: str = "rows",
        group_unit: str = "groups",
    ) -> None:
        self.what = what
        self.groups = list(groups)
        self.group_of = group_of
        self.expected_rows = expected_rows
        self.write = write
        self.pending: dict[Hashable, list[pa.Table]] = defaultdict(list)
        self.have: dict[Hashable, int] = defaultdict(int)
        self.written: list[Hashable] = []
        self.units = 0
        self.progress = Progress(what, len(self.groups), group_unit, counted=unit, every_unit=True)
        self._expected_groups = set(self.groups)

    def add(self, batch: pa.Table) -> None:
        groups = np.asarray(self.group_of(batch), dtype=object)
        for group in dict.fromkeys(groups.tolist()):
            if group not in self._expected_groups:
                raise UnfinishedGroups(f"{self.what}: rows of {group!r}, which this run does not write")
            rows = batch.filter(pa.array(groups == group))
            self.pending[group].append(rows)
            self.have[group] += rows.num_rows
            expected = self.expected_rows(group, rows)
            if self.have[group] == expected:
                self._write(group, pa.concat_tables(self.pending.pop(group)))
            elif self.have[group] > expected:
                raise UnfinishedGroups(f"{self.what} {group}: {self.have[group]} rows, more than its {expected}")

    def _write(self, group: Hashable, rows: pa.Table) -> None:
        units = self.write(group, rows)
        self.units += units
        self.written.append(group)
        self.progress.advance(counted=units, note=str(group))

    def unfinished(self) -> list[Hashable]:
        written = set(self.written)
        return [g for g in self.groups if g not in written]

    def consume(self, batches: Iterable[pa.Table]) -> None:
        """Adds every batch, then refuses to end with a group still missing rows."""
        for batch in batches:
            self.add(batch)
        missing = self.unfinished()
        if missing:
            raise UnfinishedGroups(f"{self.what}: {missing} did not receive all their rows")
