"""`report`: a page a person opens in a browser to see what a sonify run or a pool holds.

sonify.out/report/ and pool.dir/report/ are laid out by schemas.layout.ReportLayout: the page
(summary, errors and drops by kind, plots, and for sonify the gallery), its counts for machines,
the plots, and the gallery's thumbnails and mixes. The folder holds everything its page shows, so
it works offline and can be copied elsewhere.

Aggregates are DuckDB queries over the Parquet files, so the driver holds answers (counts, bins,
a few examples), not rows; the gallery reads only its samples' members from their shards.
"""

from __future__ import annotations

from typing import Literal

from pipelines.pool.store import PoolStore
from pipelines.report.files import ReportError
from pipelines.report.pool_page import pool_report
from pipelines.report.sonify_page import manifest_files, sonify_report
from schemas.config import RunConfig
from schemas.layout import SonifyLayout

__all__ = ["ReportError", "Target", "pool_report", "run_report", "sonify_report"]


Target = Literal["sonify", "pool", "all"]


def run_report(config: RunConfig, target: Target) -> list[str]:
    """The reports asked for: `sonify`, `pool`, or `all` (each of the two that has something to
    report). Returns the URLs of their pages."""
    written = []
    if target in ("sonify", "all"):
        has_run = bool(config.sonify.out) and bool(manifest_files(SonifyLayout(config.sonify.out)))
        if target == "sonify" or has_run:
            written.append(sonify_report(config))
    if target in ("pool", "all"):
        has_pool = bool(PoolStore.at(config.pool.dir).clip_files())
        if target == "pool" or has_pool:
            written.append(pool_report(config))
    if not written:
        raise ReportError(
            f"nothing to report: neither sonify.out ({config.sonify.out}) "
            f"nor pool.dir ({config.pool.dir}) holds a finished run"
        )
    return written
