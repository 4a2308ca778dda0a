"""The sonify run's report page: counts, problems and drops by kind, plots, and a gallery of samples
whose thumbnails and mixes are read from their shards."""

from __future__ import annotations

import logging
import time

from PIL import Image

from pipelines.pool.store import PoolStore
from pipelines.report.clips import top_clip_players
from pipelines.report.files import ReportError, ReportFiles, histogram_entry, read_json, report_json, write_report
from pipelines.report.missing import TOP_MISSING_SOUNDS, top_missing_sounds
from schemas import IMAGE_REFS, MANIFEST, POOL_CLIPS, SCENES
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from schemas.report_layout import ReportLayout
from stages.io import storage
from stages.report import plots
from stages.report import sonify as report_sonify
from stages.report.gallery import read_samples, thumbnail_jpeg
from stages.report.html import GalleryEntry, Plot, render_page
from stages.report.sql import ReportInputError, connect

log = logging.getLogger(__name__)

TOP_LABELS = 50
LOUDNESS_POINTS = 5000
# A shard is read by walking its tar headers; small read-ahead blocks keep that walk from pulling
# in the data of members it skips on object stores.
SHARD_BLOCK_BYTES = 64 * 1024


def manifest_files(paths: SonifyLayout) -> list[str]:
    return storage.list_files(paths.manifest_folder(), ".parquet")


def scene_files(paths: SonifyLayout) -> list[str]:
    """The scenes of every VLM the run had, whichever the config names now."""
    fs, path = storage.filesystem(paths.scenes_folder())
    if not fs.exists(path):
        return []
    folders = sorted(entry["name"] for entry in fs.ls(path, detail=True) if entry["type"] == "directory")
    return [url for folder in folders for url in storage.list_files(storage.full_url(fs, folder), ".parquet")]


def gallery_media(paths: SonifyLayout, items: list[dict], thumbnail_px: int, report: ReportFiles) -> list[GalleryEntry]:
    """Each chosen sample's thumbnail and mix, read from its shard; a sample that cannot be read
    keeps its entry with the reason."""
    entries = []
    for item in items:
        image_name = item["image_uri"] + (f" ({item['image_member']})" if item["image_member"] else "")
        entries.append(
            GalleryEntry(
                item["key"],
                item["vlm"],
                item["shard"],
                image_name,
                item["caption"],
                item["mix_lufs"],
                item["concepts"],
                item["text_audio"],
                item["image_audio"],
                item["shown_for"],
            )
        )
    by_shard: dict[str, list[int]] = {}
    for number, item in enumerate(items):
        by_shard.setdefault(item["shard"], []).append(number)
    for shard, numbers in sorted(by_shard.items()):
        if "/" in shard or shard in ("", ".", ".."):
            for n in numbers:
                entries[n].problems.append(f"manifest row {items[n]['key']}: {shard!r} is not a shard file name")
            continue
        url = paths.shard_named(shard)
        fs, path = storage.filesystem(url)
        try:
            with fs.open(path, "rb", block_size=SHARD_BLOCK_BYTES) as handle:
                found = read_samples(handle, [items[n]["key"] for n in numbers])
        except (OSError, EOFError, ValueError) as exc:
            for n in numbers:
                entries[n].problems.append(f"{url}: cannot read the shard ({type(exc).__name__}: {exc})")
            continue
        for n in numbers:
            members = found.get(items[n]["key"])
            if members is None:
                entries[n].problems.append(f"{url}: holds no sample {items[n]['key']}")
                continue
            if "flac" in members:
                entries[n].audio = report.add(ReportLayout.mix(n + 1), members["flac"])
            else:
                entries[n].problems.append(f"{url}: sample {items[n]['key']} has no flac member")
            images = [ext for ext in members if ext not in ("flac", "json")]
            try:
                if not images:
                    raise ValueError("no image member")
                entries[n].thumbnail = report.add(
                    ReportLayout.thumbnail(n + 1), thumbnail_jpeg(members[images[0]], thumbnail_px)
                )
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                entries[n].problems.append(f"{url}: sample {items[n]['key']}: image not shown ({exc})")
    return entries


def missing_note(summary: dict | None, shown: int) -> str:
    totals = (summary or {}).get("missing_sounds")
    if not totals:
        return f"The {shown} most requested sounds the pool lacks."
    return (
        f"{totals['requests']} concepts asked for {totals['texts']} texts that no usable pool clip matched, "
        f"in {totals['groups']} groups of near-identical texts; the {shown} most requested groups, with images "
        "they were heard in (missing_sounds.parquet holds them all)."
    )


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
            counts = [
                *report_sonify.stage_counts(con),
                *report_sonify.split_counts(con),
                *report_sonify.license_counts(con),
            ]
            problems = report_sonify.problems(con).to_pylist()
            labels = report_sonify.label_frequency(con, TOP_LABELS)
            concept_hists = report_sonify.concept_histograms(con)
            mix_hists = report_sonify.mix_histograms(con)
            alignment_hists = report_sonify.alignment_histograms(con)
            index_meta = pool.index_meta() or {}
            use_counts = report_sonify.clip_use_counts(con)
            usage = report_sonify.clip_usage(use_counts, index_meta.get("size"))
            top_clips = report_sonify.top_used_clips(con, report_sonify.TOP_USED_CLIPS)
            generated_clips = report_sonify.used_generated_clips(con, report_sonify.GENERATED_CLIPS_PLAYED)
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
        histogram_entry(
            report,
            "cosine",
            concept_hists["cosine"],
            "Cosine of the chosen clip",
            "cosine similarity (CLAP text to audio)",
            "Cosine between each concept's text and its chosen clip.",
        ),
        histogram_entry(
            report,
            "ssr",
            concept_hists["ssr"],
            "SSR score of the chosen clip",
            "signed square root of the cosine",
            "The score the weighted choice used (the cosine itself when retrieval.ssr is false).",
        ),
        histogram_entry(
            report,
            "threshold",
            concept_hists["threshold"],
            "Threshold tau",
            "mean of the top-k scores",
            "Each concept's dynamic threshold: candidates score at least this.",
        ),
        histogram_entry(
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
        histogram_entry(
            report,
            "mix-peak",
            mix_hists["mix_peak_dbfs"],
            "Mix peak",
            "sample peak (dBFS)",
            "Peak of each written mix.",
            (config.mix.peak_dbfs, "mix.peak_dbfs"),
        ),
        histogram_entry(
            report,
            "text-audio",
            alignment_hists["text_audio"],
            "Text-audio alignment",
            "mean CLAP cosine of a sample's text concepts to their clips",
            "Each written sample's text_audio score; a sample without text concepts (a mapper's scene) has none.",
        ),
        histogram_entry(
            report,
            "image-audio",
            alignment_hists["image_audio"],
            "Image-audio alignment",
            "cosine of the mapped CLIP image vector to the CLAP vector of the mix",
            "Each written sample's image_audio score; none without a mapper (models.vlm backend: mapper).",
        ),
        histogram_entry(
            report,
            "mix-gain",
            mix_hists["mix_gain_db"],
            "Mix gain",
            "gain applied to the whole mix (dB)",
            "Below 0: the mix passed the peak ceiling and was scaled down.",
        ),
    ]
    gallery = gallery_media(paths, items, config.report.thumbnail_px, report)
    players = top_clip_players(paths, pool.layout, config.mix.sample_rate, top_clips, report.add)
    missing = top_missing_sounds(paths, TOP_MISSING_SOUNDS, config.report.thumbnail_px, report.add)
    generated_players = top_clip_players(
        paths, pool.layout, config.mix.sample_rate, generated_clips, report.add, ReportLayout.generated_clip
    )
    summary = read_json(paths.summary())
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
            f"{len(gallery)} of {samples_written} written samples: the {report_sonify.EXTREME_SAMPLES} lowest- and "
            "highest-scoring of each alignment score (text_audio, image_audio) where samples have one, then a "
            f"random choice with report.gallery_seed {config.report.gallery_seed}. Images and mixes are copies "
            "beside this page.",
            players,
            f"The {len(players)} clips that the most concepts of written samples chose, and how many; "
            f"their audio at {config.mix.sample_rate} Hz is copied beside this page.",
            missing,
            missing_note(summary, len(missing or [])),
            generated_players,
            f"The {len(generated_players)} generated clips (run_pipeline.py generate) that the most concepts of "
            f"written samples chose, with the prompt each was made from; their audio at {config.mix.sample_rate} Hz "
            "is copied beside this page.",
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
        "generated_clips": [{"clip_id": c["clip_id"], "uses": c["uses"]} for c in generated_clips],
        "pool_k_occurrence_skewness": (summary or {}).get("exposure", {}).get("pool_k_occurrence_skewness"),
    }
    report.add(
        ReportLayout.summary(),
        report_json(
            counts,
            problems,
            {
                "gallery": [i["key"] for i in items],
                "clip_usage": clip_stats,
                "missing_sounds": [{"text": m["text"], "requests": m["requests"]} for m in missing or []],
            },
        ),
    )
    index = write_report(paths.report_folder(), report)
    log.info(
        "sonify report written in %.1f s: %d plots, %d gallery samples",
        time.monotonic() - started,
        len(figures),
        len(gallery),
    )
    return index
