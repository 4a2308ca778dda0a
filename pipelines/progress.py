"""Pending units and progress: how every phase finds its work and says how it goes.

A phase's units (chunks, shards, pool parts) are complete when their completion marker exists, so a
rerun does only the units without one: `pending` picks them and logs how many are left, and
`Progress` logs "N/M done" with the rate as they complete, so a long run shows it is moving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

log = logging.getLogger(__name__)

# A phase of many units logs about this many progress lines, however many units it has.
PROGRESS_LINES = 20

Unit = TypeVar("Unit")


def pending(what: str, units: Iterable[Unit], is_done: Callable[[Unit], bool], unit: str = "chunks") -> list[Unit]:
    """The units, in their order, whose completion marker `is_done` does not find; logs how many of
    how many are left to do."""
    units = list(units)
    todo = [u for u in units if not is_done(u)]
    log.info("%s: %d of %d %s to do, %d already written", what, len(todo), len(units), unit, len(units) - len(todo))
    return todo


class Progress:
    """Logs `what: N/M <unit> done` and the rate as units complete: every unit with `every_unit`,
    otherwise about PROGRESS_LINES times over the run, and always at the last unit. `counted` names
    what the rate counts where it is not the units themselves (images of a chunk, clips of a part)."""

    def __init__(self, what: str, total: int, unit: str, counted: str | None = None, every_unit: bool = False) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.counted_unit = counted
        self.step = 1 if every_unit else max(1, total // PROGRESS_LINES)
        self.done = 0
        self.counted = 0
        self.next_report = 0
        self.started = time.monotonic()

    def advance(self, units: int = 1, counted: int = 0, note: str = "") -> None:
        """`units` more units complete, holding `counted` of what the rate counts; `note` names them."""
        self.done += units
        self.counted += counted
        if self.done < self.next_report and self.done < self.total:
            return
        self.next_report = self.done + self.step
        elapsed = time.monotonic() - self.started
        line = f"{self.what}: {self.done}/{self.total} {self.unit} done{f' ({note})' if note else ''}"
        if self.counted_unit:
            rate = self.counted / elapsed if elapsed else 0.0
            line += f"; {self.counted} {self.counted_unit} so far, {rate:.1f} {self.counted_unit}/s"
        else:
            line += f", {self.done / elapsed if elapsed else 0.0:.1f} {self.unit}/s"
        log.info(line)
