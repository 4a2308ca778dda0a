"""What a report writes: its files by path inside the report folder, written with the page last."""

from __future__ import annotations

import json
from dataclasses import dataclass

from schemas.errors import PipelineError
from schemas.report_layout import ReportLayout
from stages.io import storage
from stages.report import plots
from stages.report.html import Plot
from stages.report.sql import Histogram


class ReportError(PipelineError):
    """There is nothing to report, or its files cannot be read."""


@dataclass
class ReportFiles:
    """What a report writes, by path inside its folder."""

    files: dict[str, bytes]

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return name


def write_report(folder: str, report: ReportFiles) -> str:
    """Writes the report's files, the page last, and deletes plots and media that an earlier
    report left and this one does not show."""
    for sub in ReportLayout.replaced_folders():
        for url in storage.list_files(storage.join(folder, sub), ""):
            if storage.join(sub, url.rsplit("/", 1)[-1]) not in report.files:
                storage.remove(url)
    page = report.files.pop(ReportLayout.page())
    for name, data in report.files.items():
        storage.write_bytes(storage.join(folder, name), data)
    index_url = storage.join(folder, ReportLayout.page())
    storage.write_bytes(index_url, page)
    return index_url


def histogram_entry(
    report: ReportFiles,
    name: str,
    hist: Histogram,
    title: str,
    xlabel: str,
    caption: str,
    marker: tuple[float, str] | None = None,
) -> Plot:
    return Plot(
        name, report.add(ReportLayout.plot(name), plots.histogram_plot(hist, title, xlabel, marker)), title, caption
    )


def read_json(url: str) -> dict | None:
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def report_json(counts: list[tuple[str, int]], problems: list[dict], extra: dict) -> bytes:
    return (json.dumps({"counts": dict(counts), "problems": problems, **extra}, indent=2) + "\n").encode()
