"""Pieces the benchmarks share: the command line, timing, and the printed table and ratios."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink every size for a fast smoke run")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def run(description: str, bench: Callable[[argparse.Namespace, np.random.Generator], None]) -> None:
    """A script's entry point: `bench` with the parsed command line and a generator seeded from it,
    then the total wall time."""
    args = parse_args(description)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    bench(args, rng)
    print(f"total wall time {time.perf_counter() - start:.0f} s")


def timed(function: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def fastest(runs: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], dict[str, object]]:
    """Seconds of the fastest of `rounds` runs of each, run in turns so load on the machine hits
    each alike, and each one's last result."""
    best = {name: float("inf") for name in runs}
    results = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


@dataclass
class Row:
    measurement: str
    size: str
    seconds: float | None
    rate: float | None = None
    unit: str = ""
    recall: str = ""
    note: str = ""

    def seconds_text(self) -> str:
        return "" if self.seconds is None else f"{self.seconds:.2f}"

    def rate_text(self) -> str:
        if self.rate is None:
            return ""
        return f"{self.rate:,.0f} {self.unit}" if self.rate >= 100 else f"{self.rate:.1f} {self.unit}"


def print_machine(quick: bool, *details: str) -> None:
    """The line that heads the output: core count, the given thread counts or versions, and the size set."""
    print(", ".join([f"cpus {os.cpu_count()}", *details]) + (", quick sizes" if quick else ""))


def print_table(rows: list[Row]) -> None:
    cells = [["measurement", "size", "seconds", "rate", "recall@10", "note"]]
    cells += [[r.measurement, r.size, r.seconds_text(), r.rate_text(), r.recall, r.note] for r in rows]
    # A column no row fills (recall, where nothing is searched) is left out.
    kept = [i for i in range(len(cells[0])) if any(line[i] for line in cells[1:])]
    cells = [[line[i] for i in kept] for line in cells]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for number, line in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if number == 0:
            print("-+-".join("-" * w for w in widths))


def print_report(rows: list[Row], ratio_lines: list[str]) -> None:
    """The table, then the ratios between its measurements."""
    print()
    print_table(rows)
    print()
    print("Ratios (same run, back to back; rely on these rather than absolute figures):")
    for line in ratio_lines:
        print(f"  {line}")
