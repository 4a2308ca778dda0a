"""The pool's report page: counts, problems by kind, formats, durations, loudness and the silent
share, from DuckDB queries over the pool table."""

from __future__ import annotations

from pipelines.pool.store import PoolStore
from pipelines.report.files import ReportError, ReportFiles, histogram_entry, report_json, write_report
from schemas import POOL_CLIPS
from schemas.config import RunConfig
from schemas.report_layout import ReportLayout
from stages.report import plots
from stages.report import pool as report_pool
from stages.report.html import Plot, render_page
from stages.report.sql import ReportInputError, connect


def pool_report(config: RunConfig) -> str:
    """Writes pool.dir/report/ and returns the URL of its index.html."""
    pool = PoolStore.at(config.pool.dir)
    clips = pool.clip_files()
    if not clips:
        raise ReportError(f"{pool.layout.clips_folder()} holds no pool table: run `run_pipeline.py pool` first")
    report = ReportFiles({})
    try:
        with connect({"clips": (clips, POOL_CLIPS)}) as con:
            counts = report_pool.pool_counts(con, config.pool.clip_seconds)
            problems = report_pool.pool_problems(con).to_pylist()
            formats = report_pool.formats(con)
            durations = report_pool.source_durations(con)
            loudness = report_pool.clip_loudness(con)
            silent, audible = report_pool.silent_share(con)
            licenses = report_pool.license_counts(con)
    except ReportInputError as exc:
        raise ReportError(str(exc)) from None
    index_meta = pool.index_meta()
    if index_meta is not None:
        counts.append(("clips in the index", int(index_meta["size"])))
    counts += licenses
    share = silent / (silent + audible) if silent + audible else 0.0
    figures = [
        Plot(
            "formats",
            report.add(ReportLayout.plot("formats"), plots.bar_chart(formats, "Source files by format", "files")),
            "Formats",
            "Decoded format of each source file that gave clips.",
        ),
        histogram_entry(
            report,
            "durations",
            durations,
            "Source durations",
            "seconds",
            "Length of each source file before it was cut into clips.",
        ),
        histogram_entry(
            report,
            "clip-loudness",
            loudness,
            "Clip loudness",
            "integrated loudness at the pool rate (LUFS)",
            "Loudness of each clip; digital silence has none.",
            (config.pool.silence_lufs, "pool.silence_lufs"),
        ),
        Plot(
            "silent",
            report.add(
                ReportLayout.plot("silent"),
                plots.bar_chart([("audible", audible), ("silent", silent)], f"Silent share: {share:.1%}", "clips"),
            ),
            "Silent share",
            "Clips below pool.silence_lufs are kept in the table but never retrieved.",
        ),
    ]
    summary = pool.summary()
    notes = [
        f"The last pool run took {summary['wall_seconds']:.0f} s."
        if summary
        else "No summary.json: the last pool run has not finished."
    ]
    report.add(ReportLayout.page(), render_page("Pool report", pool.root, counts, problems, figures, notes).encode())
    report.add(ReportLayout.summary(), report_json(counts, problems, {"silent_share": share}))
    return write_report(pool.layout.report_folder(), report)
