"""A sonify run: its phases in order, each skipped where sonify.out already holds it, and the summary."""

from __future__ import annotations

import json
import logging
import time

from pipelines.config import dump_config
from pipelines.pool.store import PoolStore
from pipelines.sonify.checks import (
    SonifyError,
    check_batches,
    check_mappers,
    check_pool,
    check_same_pool,
    check_same_run,
    has_searched,
)
from pipelines.sonify.credits import card_licenses, license_notes, write_attribution, write_image_credits
from pipelines.sonify.listing import chunk_listing, image_listing
from pipelines.sonify.matching import list_missing_sounds, search_totals
from pipelines.sonify.plans import number_shards, retrieve_and_plan
from pipelines.sonify.scenes import count_scenes, run_scenes
from pipelines.sonify.writing import feature_identities, manifest_counts, write_shards
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from stages.io import storage
from stages.licences.spdx import allowed_rows
from stages.pairing.card import dataset_card
from stages.report.sonify import exposure

log = logging.getLogger(__name__)


def run_sonify(config: RunConfig) -> dict:
    started = time.monotonic()
    out = config.sonify.out
    if not out:
        raise SonifyError("sonify.out is not set")
    if not config.models.vlm:
        raise SonifyError("models.vlm is empty: configure at least one VLM (or backend: provided)")
    paths, pool_state = check_pool(config)
    identities = check_mappers(config, paths)
    layout = SonifyLayout(out)
    check_batches(config)
    check_same_run(config, layout)
    storage.makedirs(layout.root)
    check_same_pool(layout, paths.root, pool_state)
    layout_url = layout.layout_version()
    if not storage.exists(layout_url):
        storage.write_text(layout_url, json.dumps({"layout": SonifyLayout.VERSION}) + "\n")
    leftovers = storage.remove_temporaries(layout.temporary_folders(v.name for v in config.models.vlm))
    if leftovers:
        log.warning("removed %d temporary files that an interrupted run left", leftovers)
    storage.write_text(layout.config(), dump_config(config))
    seconds: dict[str, float] = {}

    tick = time.monotonic()
    listing, listed = image_listing(config, layout)
    chunks = chunk_listing(listing.num_rows, config.sonify.images_per_chunk)
    # Like mix_clips, fixed once a chunk is searched, so that every chunk is planned with the same credits.
    if not has_searched(layout) or not storage.exists(layout.image_credits()):
        images_credited, image_keys_unmatched = write_image_credits(config, layout, listing)
    else:
        images_credited, image_keys_unmatched = storage.parquet_rows(layout.image_credits()), []
    if image_keys_unmatched:
        log.warning(
            "%d sonify.image_metadata keys match no image (first: %s)",
            len(image_keys_unmatched),
            ", ".join(image_keys_unmatched[:3]),
        )
    seconds["list_images"] = time.monotonic() - tick
    log.info(
        "%d images listed, in %d chunks of up to %d", listing.num_rows, len(chunks), config.sonify.images_per_chunk
    )

    for vlm in config.models.vlm:
        tick = time.monotonic()
        run_scenes(config, listing, chunks, vlm, layout, identities)
        seconds[f"concepts_{vlm.name}"] = time.monotonic() - tick
    del listing
    scene_counts = count_scenes(config, layout, chunks)

    tick = time.monotonic()
    store = PoolStore(paths)
    audible, inaudible = store.mixable_clips(
        config.mix.sample_rate,
        config.pool.silence_lufs,
        config.pool.max_band_loss_lu,
        config.retrieval.allow_generated,
    )
    mixable, denied = allowed_rows(audible, config.sonify.licenses.allow, config.sonify.licenses.deny)
    del audible
    # Once a chunk is searched the pool cannot change (check_same_pool), so neither can this table:
    # a rerun leaves it, and the files of a finished run, untouched.
    if not has_searched(layout) or not storage.exists(layout.mix_clips()):
        storage.write_parquet(layout.mix_clips(), mixable)
    del mixable
    plans = retrieve_and_plan(config, paths, layout, chunks)
    tasks, planned, reasons = number_shards(plans)
    search = search_totals(plans, store.index_meta()["kind"])
    del plans
    seconds["retrieve_and_plan"] = time.monotonic() - tick

    tick = time.monotonic()
    missing = list_missing_sounds(config, paths, layout, [chunk.name for chunk in chunks])
    seconds["missing_sounds"] = time.monotonic() - tick

    tick = time.monotonic()
    write_shards(config, paths, layout, tasks)
    seconds["mix_and_write"] = time.monotonic() - tick

    written = manifest_counts(layout)
    credits = write_attribution(layout)
    summary = {
        "out": layout.root,
        "images": {
            "listed": listed["listed"],
            "renamed_duplicate_ids": listed["renamed_duplicate_ids"],
            "errors": sum(scene_counts.image_errors.values()),
            "errors_by_kind": dict(sorted(scene_counts.image_errors.items())),
            "too_small": scene_counts.too_small,
        },
        "chunks": len(chunks),
        "scenes": {vlm.name: dict(sorted(scene_counts.by_vlm[vlm.name].items())) for vlm in config.models.vlm},
        "concepts": scene_counts.concepts,
        "concepts_with_empty_text": scene_counts.dropped_empty_concepts,
        # Distinct texts per chunk, summed: a text recurring in several chunks is searched in each.
        "concept_texts_searched": search.pop("texts_searched"),
        # Mapped concepts (models.vlm backend: mapper) searched by their vectors, one per image and mapper.
        "mapped_concepts_searched": search.pop("mapped_searched"),
        # The index kind, and for an approximate one the nprobe/efSearch used and the recall
        # measured on the run's texts.
        "search": search,
        "concepts_below_min_cosine": planned["concepts_below_min_cosine"],
        # Concepts whose neighbours were all inaudible at the mix rate or already used by the sample.
        "concepts_without_usable_clip": planned["concepts_no_usable_clip"],
        # Mapped concepts among those two: they have no text, so the missing-sounds list leaves them out.
        "mapped_concepts_missing": planned["mapped_concepts_missing"],
        "pool_clips_inaudible_at_mix_rate": inaudible,
        # Audible pool clips that sonify.licenses removed before any choice, per licence (`unknown`: none).
        "pool_clips_denied_by_license": dict(sorted(denied.items())),
        # Distinct clips used by the written samples, per licence; and what ATTRIBUTION.md credits.
        "clips_used_by_license": credits["clips_by_license"],
        "attribution": {
            "clips_credited": credits["credited_clips"],
            "images_credited": credits["credited_images"],
            "images_with_metadata": images_credited,
            "image_metadata_keys_unmatched": len(image_keys_unmatched),
        },
        # The concepts below the floor or without a usable clip, by distinct text and by group of
        # near-identical texts (missing_sounds.parquet): the sounds to add to the pool.
        "missing_sounds": missing,
        "threshold_fallbacks": planned["fallbacks"],
        "samples": written.samples,
        # Written samples per split (sonify.splits), and with sonify.split_by_clip the concepts the
        # rule left without a clip or gave another clip than they would have had.
        "splits": split_totals(config, written.samples_by_split, planned),
        "rejected": planned["rejected"] + sum(written.failed_by_kind.values()),
        # Samples planned whose shard could not hold them: an image gone or unencodable, a silent mix.
        "write_errors_by_kind": dict(sorted(written.failed_by_kind.items())),
        "error_reasons": reasons,
        "distinct_clips_used": len(written.clip_uses),
        # Each alignment score over the written samples that have it (docs/mapper.md#alignment-scores);
        # samples under sonify.min_alignment are among write_errors_by_kind (low_alignment).
        "alignment": {name: totals.summary() for name, totals in written.alignment.items()},
        # Concepts of written samples whose clip is generated (`run_pipeline.py generate`).
        "concepts_with_generated_clip": written.generated_concepts,
        # How evenly the written samples use the pool, and how hubby the pool is against the run's bank.
        "exposure": exposure(written.clip_uses, pool_state["index_size"], hubness_skewness(config, layout)),
        # What mixing read from the pool, and the stored size of the clips each shard uses (a clip
        # used by two shards counts in both): clips are read by byte range, so the two are close.
        "pool_bytes_read": written.pool_reads["pool_bytes_read"],
        "pool_bytes_of_clips_used": written.pool_reads["pool_clip_bytes"],
        "shards": tasks.num_rows,
        # The embeddings beside each sample (sonify.features): each one's model, width and weights.
        "features": feature_identities(config),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(layout.summary(), json.dumps(summary, indent=2) + "\n")
    pool = {"clap": store.meta().get("clap"), "indexed_clips": pool_state["index_size"]}
    storage.write_text(
        layout.card(), dataset_card(config, summary, pool, card_licenses(credits), license_notes(credits))
    )
    return summary


def split_totals(config: RunConfig, samples_by_split: dict, planned: dict) -> dict | None:
    if not config.sonify.splits:
        return None
    totals = {"samples": {name: samples_by_split.get(name, 0) for name in config.sonify.splits}}
    if config.sonify.split_by_clip:
        totals["concepts_other_split"] = planned["concepts_other_split"]
        totals["concepts_rechosen_for_split"] = planned["concepts_rechosen_for_split"]
    return totals


def hubness_skewness(config: RunConfig, layout: SonifyLayout) -> float | None:
    """The pool's k-occurrence skewness against the run's hubness bank; None with retrieval.hubness: none."""
    url = layout.hubness_stats()
    if config.retrieval.hubness == "none" or not storage.exists(url):
        return None
    return json.loads(storage.read_bytes(url))["k_occurrence_skewness"]


def exposure_line(numbers: dict) -> str:
    skew = numbers["pool_k_occurrence_skewness"]
    return (
        f"{numbers['distinct_clips']} distinct clips, at most {numbers['max_uses_of_one_clip']} uses of one, "
        f"top-{numbers['top_clips']} share {numbers['top_clips_share']:.3f}, Gini {numbers['gini']:.3f}, "
        f"pool hubness (k-occurrence skewness) {'n/a' if skew is None else f'{skew:.2f}'}"
    )


def alignment_line(alignment: dict, rejected: int) -> str:
    """Each score's mean and range over the samples that have it, and the samples sonify.min_alignment
    rejected."""

    def one(name: str, score: dict) -> str:
        if not score["samples"]:
            return f"{name} none"
        return (
            f"{name} mean {score['mean']:.3f} (min {score['min']:.3f}, max {score['max']:.3f}, "
            f"{score['samples']} samples)"
        )

    line = "; ".join(one(name, score) for name, score in alignment.items())
    return line + (f"; {rejected} samples under sonify.min_alignment" if rejected else "")


def licenses_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {license}" for license, n in counts.items()) or "none"


def split_line(splits: dict) -> str:
    line = ", ".join(f"{name} {n}" for name, n in splits["samples"].items()) + " samples"
    if "concepts_other_split" in splits:
        line += (
            f"; keeping their clips apart dropped {splits['concepts_other_split']} concepts "
            f"and changed the clip of {splits['concepts_rechosen_for_split']}"
        )
    return line


def search_line(search: dict) -> str:
    if search["exact"]:
        return "exact (flat index)"
    if "settings" not in search:
        return f"{search['index_kind']}, no text searched"
    measured = (
        f"{search['recall']:.3f} on {search['recall_queries']} sampled texts"
        if search["recall"] is not None
        else "not measured (no chunk of texts among those recall_every picks)"
    )
    return (
        f"{search['index_kind']} at {'/'.join(map(str, search['settings']))}, chosen at recall@{search['recall_k']} "
        f"{search['calibration_recall']:.3f} on {search['calibration_queries']} texts; measured {measured}"
    )


def format_summary(summary: dict) -> str:
    images = summary["images"]
    layout = SonifyLayout(summary["out"])
    kinds = ", ".join(f"{n} {kind}" for kind, n in images["errors_by_kind"].items())
    lines = [
        f"sonify {summary['out']}",
        f"  manifest: {layout.manifest_folder()}/*.parquet   "
        f"shards: {layout.shards_folder()}/*.tar ({summary['shards']})",
        f"  images:   {images['listed']} listed in {summary['chunks']} chunks, {images['errors']} errors"
        f"{f' ({kinds})' if kinds else ''}, {images['too_small']} too small, "
        f"{images['renamed_duplicate_ids']} duplicate ids renamed",
    ]
    lines += [f"  scenes:   {name}: {json.dumps(counts, sort_keys=True)}" for name, counts in summary["scenes"].items()]
    lines += [
        f"  concepts: {summary['concepts']} ({summary['concept_texts_searched']} texts searched, distinct per chunk; "
        f"{summary['mapped_concepts_searched']} mapped), "
        f"{summary['concepts_with_empty_text']} with empty text, "
        f"{summary['concepts_below_min_cosine']} below min_cosine, "
        f"{summary['concepts_without_usable_clip']} without a usable clip "
        f"({summary['pool_clips_inaudible_at_mix_rate']} pool clips inaudible at the mix rate)",
        f"  missing:  {summary['missing_sounds']['requests']} concepts asked for {summary['missing_sounds']['texts']} "
        f"texts the pool lacks, in {summary['missing_sounds']['groups']} groups: {layout.missing_sounds()}"
        + (
            f"; {summary['mapped_concepts_missing']} mapped concepts (no text) got no clip"
            if summary["mapped_concepts_missing"]
            else ""
        ),
        f"  search:   {search_line(summary['search'])}",
        f"  samples:  {summary['samples']} written, {summary['rejected']} rejected, "
        f"{summary['distinct_clips_used']} distinct clips used, "
        f"{summary['concepts_with_generated_clip']} concepts with a generated clip",
        f"  aligned:  {alignment_line(summary['alignment'], summary['write_errors_by_kind'].get('low_alignment', 0))}",
        f"  exposure: {exposure_line(summary['exposure'])}",
        f"  licences: clips used {licenses_line(summary['clips_used_by_license'])}; pool clips denied "
        f"{licenses_line(summary['pool_clips_denied_by_license'])}; ATTRIBUTION.md credits "
        f"{summary['attribution']['clips_credited']} clips and {summary['attribution']['images_credited']} images",
        *([f"  splits:   {split_line(summary['splits'])}"] if summary["splits"] else []),
        f"  pool:     {summary['pool_bytes_read'] / 1e6:.1f} MB read to mix "
        f"{summary['pool_bytes_of_clips_used'] / 1e6:.1f} MB of clips",
        f"  time:     {summary['wall_seconds']:.1f} s  "
        + ", ".join(f"{k} {v:.1f}s" for k, v in summary["seconds"].items()),
    ]
    lines += [f"  rejected: {reason}" for reason in summary["error_reasons"][:5]]
    return "\n".join(lines)
