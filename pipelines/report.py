"""`report`: a page a person opens in a browser to see what a sonify run or a pool holds.

sonify.out/report/ and pool.dir/report/ are laid out by schemas.layout.ReportLayout: the page
(summary, errors and drops by kind, plots, and for sonify the gallery), its counts for machines,
the plots, and the gallery's thumbnails and mixes. The folder holds everything its page shows, so
it works offline and can be copied elsewhere.

Aggregates are DuckDB queries over the Parquet files, so the driver holds answers (counts, bins,
a few examples), not rows; the gallery reads only its samples' members from their shards.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

from pipelines.pool.store import PoolStore
from pipelines.report_clips import top_clip_players
from pipelines.report_files import ReportError, ReportFiles, histogram_plot, report_json, write_report
from pipelines.report_gallery import gallery_media
from pipelines.report_pool import pool_report
from schemas import IMAGE_REFS, MANIFEST, POOL_CLIPS, SCENES
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from schemas.report_layout import ReportLayout
from stages.io import storage
from stages.report import plots
from stages.report import sonify as report_sonify
from stages.report.html import Plot, render_page
from stages.report.sql import ReportInputError, connect

log = logging.getLogger(__name__)

TOP_LABELS = 50
LOUDNESS_POINTS = 5000
Target = Literal["sonify", "pool", "all"]


def manifest_files(paths: SonifyLayout) -> list[str]:
    return storage.list_files(paths.manifest_folder(), ".parquet")


def scene_files(paths: SonifyLayout) -> list[str]:
    """The scenes of every VLM the run had, whichever the config names now."""
    fs, path = storage.filesystem(paths.scenes_folder())
    if not fs.exists(path):
        return []
    folders = sorted(entry["name"] for entry in fs.ls(path, detail=True) if entry["type"] == "directory")
    return [url for folder in folders for url in storage.list_files(storage.full_url(fs, folder), ".parquet")]


def _read_json(url: str) -> dict | None:
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def sonify_report(config: RunConfig) -> str:
    """Writes sonify.out/report/ and returns the URL of its index.html."""
    started = time.monotonic()
    if not config.sonify.out:
        raise ReportError("sonify.out is not set")
    paths = SonifyLayout(config.sonify.out)
    manifest = manifest_files(paths)
    if not manifest:
        raise ReportError(f"{paths.manifest_folder()} holds no manifest: run `run_pipeline.py sonify` first")
    images_url = paths.images()
    pool = PoolStore.at(config.pool.dir)
    views = {
        "manifest": (manifest, MANIFEST),
        "scenes": (scene_files(paths), SCENES),
        "images": ([images_url] if storage.exists(images_url) else [], IMAGE_REFS),
        "pool_clips": (pool.clip_files(), POOL_CLIPS),
    }
    report = ReportFiles({})
    try:
        with connect(views) as con:
            report_sonify.define_views(con)
            counts = report_sonify.stage_counts(con)
            problems = report_sonify.problems(con).to_pylist()
            labels = report_sonify.label_frequency(con, TOP_LABELS)
            concept_hists = report_sonify.concept_histograms(con)
            mix_hists = report_sonify.mix_histograms(con)
            index_meta = pool.index_meta() or {}
            use_counts = report_sonify.clip_use_counts(con)
            usage = report_sonify.clip_usage(use_counts, index_meta.get("size"))
            top_clips = report_sonify.top_used_clips(con, report_sonify.TOP_USED_CLIPS)
            loudness = report_sonify.loudness_check(con, LOUDNESS_POINTS, config.report.gallery_seed)
            items = report_sonify.gallery_items(con, config.report.gallery_size, config.report.gallery_seed).to_pylist()
    except ReportInputError as exc:
        raise ReportError(str(exc)) from None
    figures = [
        Plot(
            "labels",
            report.add(
                ReportLayout.plot("labels"),
                plots.bar_chart(
                    labels, f"Concept labels, the {TOP_LABELS} most frequent", "concepts in written samples"
                ),
            ),
            "Concept label frequency",
            "How often each label names a concept of a written sample.",
        ),
        histogram_plot(
            report,
            "cosine",
            concept_hists["cosine"],
            "Cosine of the chosen clip",
            "cosine similarity (CLAP text to audio)",
            "Cosine between each concept's text and its chosen clip.",
        ),
        histogram_plot(
            report,
            "ssr",
            concept_hists["ssr"],
            "SSR score of the chosen clip",
            "signed square root of the cosine",
            "The score the weighted choice used (the cosine itself when retrieval.ssr is false).",
        ),
        histogram_plot(
            report,
            "threshold",
            concept_hists["threshold"],
            "Threshold tau",
            "mean of the top-k scores",
            "Each concept's dynamic threshold: candidates score at least this.",
        ),
        histogram_plot(
            report,
            "candidates",
            concept_hists["n_candidates"],
            "Candidate-set size |C|",
            "clips at or above tau",
            "How many clips each concept chose from.",
        ),
        Plot(
            "clip-usage",
            report.add(ReportLayout.plot("clip-usage"), plots.lorenz_plot(usage)),
            "Clip usage",
            "Lorenz curve of clip choices over the pool's indexed clips: "
            "the further below the diagonal, the more a few clips dominate.",
        ),
        Plot(
            "clip-uses",
            report.add(ReportLayout.plot("clip-uses"), plots.uses_per_clip_plot(use_counts)),
            "Uses per clip",
            "Uses of each chosen clip by rank, log-log: hub clips are the steep head on the left.",
        ),
        Plot(
            "loudness",
            report.add(ReportLayout.plot("loudness"), plots.loudness_plot(loudness)),
            "Target against measured loudness",
            "Each dot is a sample; on the diagonal the mix is as loud as its sources' targets add up to.",
        ),
        histogram_plot(
            report,
            "mix-peak",
            mix_hists["mix_peak_dbfs"],
            "Mix peak",
            "sample peak (dBFS)",
            "Peak of each written mix.",
            (config.mix.peak_dbfs, "mix.peak_dbfs"),
        ),
        histogram_plot(
            report,
            "mix-gain",
            mix_hists["mix_gain_db"],
            "Mix gain",
            "gain applied to the whole mix (dB)",
            "Below 0: the mix passed the peak ceiling and was scaled down.",
        ),
    ]
    gallery = gallery_media(paths, items, config.report.thumbnail_px, report.add)
    players = top_clip_players(paths, pool, config.mix.sample_rate, top_clips, report.add)
    summary = _read_json(paths.summary())
    notes = [
        f"The last sonify run took {summary['wall_seconds']:.0f} s."
        if summary
        else "No summary.json: the run has not finished."
    ]
    samples_written = dict(counts)["samples written"]
    report.add(
        ReportLayout.page(),
        render_page(
            "Sonify report",
            paths.root,
            counts,
            problems,
            figures,
            notes,
            gallery,
            f"{len(gallery)} of {samples_written} written samples, chosen at random with report.gallery_seed "
            f"{config.report.gallery_seed}. Images and mixes are copies beside this page.",
            players,
            f"The {len(players)} clips that the most concepts of written samples chose, and how many; "
            f"their audio at {config.mix.sample_rate} Hz is copied beside this page.",
        ).encode(),
    )
    clip_stats = {
        "distinct": usage.distinct,
        "uses": usage.uses,
        "top_20_share": usage.top_share,
        "gini": usage.gini,
        "indexed_clips": usage.population,
        "max_uses": max((c["uses"] for c in top_clips), default=0),
        "top_clips": [{"clip_id": c["clip_id"], "uses": c["uses"]} for c in top_clips],
        "pool_k_occurrence_skewness": (summary or {}).get("exposure", {}).get("pool_k_occurrence_skewness"),
    }
    report.add(
        ReportLayout.summary(),
        report_json(counts, problems, {"gallery": [i["key"] for i in items], "clip_usage": clip_stats}),
    )
    index = write_report(paths.report_folder(), report)
    log.info(
        "sonify report written in %.1f s: %d plots, %d gallery samples",
        time.monotonic() - started,
        len(figures),
        len(gallery),
    )
    return index


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
