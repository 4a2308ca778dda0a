"""Planning a chunk of scenes: the clip and gain of every concept, the samples of every shard.

Pure functions of one chunk's scenes, its matches and the pool's mixable clips (MIX_CLIPS), so a
chunk is planned on any worker, alone, and the same way every time: every random draw is seeded by
the sample key (stages.search.choice.concept_rng), and shards are cut in key order. Shards are numbered
within their chunk; the driver numbers them across chunks once all are planned.

A concept is looked up in the matches by its query: its text, or for a mapper's concept (no text,
a vector) the pair (mapper, image id). A mapper in mode ambience makes no sample of its own: its
concept joins every other scene of the same image that goes on to retrieval, after the VLM's
concepts, and is chosen for each of them like any other concept of that sample.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import MANIFEST, MISSING_TEXTS, SHARD_PLANS, make_table
from schemas.config import MapperVlmConfig, RunConfig
from schemas.errors import PipelineError
from stages.audio.mixing import draw_targets, gains_db
from stages.pairing.shards import plan_shards
from stages.pairing.splits import SOURCE, split_of
from stages.search.choice import ConceptChoice, DroppedConcept, choose_clips, concept_rng

# FLAC of a 16-bit mono mix is roughly 60% of its PCM size; used only to size shards.
FLAC_BYTES_PER_SAMPLE = 1.2
# Image-id part of a sample key; with "__<vlm>" and the member extension, names stay under 255 bytes.
MAX_KEY_ID_CHARS = 160
MAX_REPORTED_REASONS = 50
# Manifest columns the shard writer sets; a planned row holds none of them.
WRITE_TIME_COLUMNS = (
    "shard_image_extension",
    "shard_image_width",
    "shard_image_height",
    "mix_gain_db",
    "mix_lufs",
    "mix_peak_dbfs",
    "shard",
    "text_audio",
    "image_audio",
)
# Drop reasons that say the pool lacks the sound (the clip cap drops a sound the pool has).
MISSING_REASONS = ("below_min_cosine", "no_usable_clip")
# Example images kept per missing text.
MISSING_EXAMPLES = 3
# The counts a chunk's plan adds to the run's summary.
CHUNK_COUNTS = (
    "samples",
    "rejected",
    "concepts_below_min_cosine",
    "concepts_no_usable_clip",
    "concepts_clip_cap",
    "concepts_other_split",
    "concepts_rechosen_for_split",
    "mapped_concepts_missing",
    "fallbacks",
)

# A concept's query: its text, or (mapper, image id) for a mapped concept.
Query = str | tuple[str, str]
# query -> (clip ids, cosines) of its top-K neighbours, best first.
Matches = dict[Query, tuple[list[str], np.ndarray]]
# query -> hubness-corrected scores of the same neighbours (absent with retrieval.hubness: none).
Corrected = dict[Query, np.ndarray]
# clip_id -> (part, byte offset, byte size) of its audio at the mix rate.
Locations = Mapping[str, tuple[str, int, int]]


class UnknownClips(PipelineError):
    """A manifest names clips that the pool does not hold (at the manifest's mix rate)."""


def sample_key(image_id: str, vlm: str) -> str:
    """WebDataset keys may not hold dots or slashes; other characters become underscores, and a
    hash of the id keeps keys unique when that folds two ids together. Long ids are cut to
    MAX_KEY_ID_CHARS, so that every member name stays a valid file name (255 bytes) when a shard is
    unpacked; then a 64-bit hash is all that tells apart ids sharing their first characters
    (scraped names often differ only at the end)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", image_id)
    if len(safe) > MAX_KEY_ID_CHARS:
        safe = f"{safe[: MAX_KEY_ID_CHARS - 17]}_{hashlib.sha1(image_id.encode()).hexdigest()[:16]}"
    elif safe != image_id:
        safe = f"{safe}_{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"
    return f"{safe}__{vlm}"


def query_of(concept: Mapping, image_id: str) -> Query:
    """The key a concept's matches are found under: its text, or (its mapper, the image) when it is
    mapped (a mapper's concept has no text and is labelled with the mapper's name)."""
    return (concept["label"], image_id) if concept["mapped"] else concept["text"]


def match_queries(matches: pa.Table) -> list[Query]:
    """The query of every MATCHES row: its text, or (mapper, image id) where the text is null."""
    columns = [matches.column(c).to_pylist() for c in ("text", "mapper", "image_id")]
    return [text if text is not None else (mapper, image) for text, mapper, image in zip(*columns)]


def matches_by_text(matches: pa.Table) -> Matches:
    """Every query's neighbours and cosines (by text, or by mapper and image for a mapped concept)."""
    return {
        q: (ids, np.asarray(s, dtype=np.float64))
        for q, ids, s in zip(match_queries(matches), *[matches.column(c).to_pylist() for c in ("clip_ids", "scores")])
    }


def corrected_by_text(matches: pa.Table) -> Corrected | None:
    """The corrected scores of every query, or None where the search made none (hubness: none)."""
    if matches.column("corrected").null_count == matches.num_rows:
        return None
    corrected = matches.column("corrected").to_pylist()
    return {q: np.asarray(c, dtype=np.float64) for q, c in zip(match_queries(matches), corrected)}


def planning_scenes(scenes: pa.Table) -> pa.Table:
    """SCENES with each concept's vector replaced by whether it has one (`mapped`): planning needs to
    know which concepts are mapped, not their vectors, which would only cost memory as Python lists."""
    concepts = scenes.column("concepts").combine_chunks()
    values = concepts.values
    slim = pa.StructArray.from_arrays(
        [values.field("label"), values.field("text"), pc.is_valid(values.field("vector"))],
        names=["label", "text", "mapped"],
    )
    rebuilt = pa.ListArray.from_arrays(concepts.offsets, slim, mask=concepts.is_null())
    return scenes.set_column(scenes.schema.get_field_index("concepts"), "concepts", rebuilt)


def with_ambience(rows: list[dict], ambience: list[str]) -> list[dict]:
    """Scene rows (planning_scenes) with the scenes of the `ambience` mappers taken out and each one's
    concept added to every other scene of its image that goes on to retrieval (no error, not
    dropped), in the order of `ambience`, after that scene's own concepts. An ambience scene with an
    error or no concept adds nothing."""
    if not ambience:
        return rows
    order = {name: i for i, name in enumerate(ambience)}
    extra: dict[str, list[tuple[int, dict]]] = {}
    for row in rows:
        if row["vlm"] in order and row["error"] is None and row["dropped"] is None:
            extra.setdefault(row["image_id"], []).extend((order[row["vlm"]], c) for c in row["concepts"] or [])
    kept = []
    for row in rows:
        if row["vlm"] in order:
            continue
        added = sorted(extra.get(row["image_id"], []), key=lambda pair: pair[0])
        if added and row["error"] is None and row["dropped"] is None:
            row = {**row, "concepts": [*row["concepts"], *(c for _, c in added)]}
        kept.append(row)
    return kept


# The credit of a clip or image as the manifest carries it, by field (license, attribution, source_url, title).
CREDIT_NAMES = ("license", "attribution", "source_url", "title")
NO_CREDIT = dict.fromkeys(CREDIT_NAMES)


@dataclass(frozen=True)
class MixableClips:
    """The rows of MIX_CLIPS for some clip ids: the ones a mix may use (audible at the mix rate,
    allowed by sonify.licenses), with their credit."""

    lufs: dict[str, float]
    locations: dict[str, tuple[str, int, int]]
    recordings: dict[str, str]  # clip_id -> its source recording (MIX_CLIPS `recording`)
    credits: dict[str, dict[str, str | None]]
    generated: frozenset[str]  # the generated ones


def mixable_clips(mix_clips: pa.Table, clip_ids: Iterable[str]) -> MixableClips:
    """Looks up clip ids in the pool-sized MIX_CLIPS table without copying it: only the rows of the
    ids asked for become Python objects. Ids absent from the table (inaudible at the mix rate, or
    not in the pool) are absent from the result."""
    wanted = pa.array(sorted(set(clip_ids)), pa.string())
    positions = pc.index_in(wanted, value_set=mix_clips.column("clip_id"))
    rows = mix_clips.take(positions.filter(pc.is_valid(positions))).to_pydict()
    ids = rows["clip_id"]
    return MixableClips(
        lufs=dict(zip(ids, rows["lufs"])),
        locations={c: (p, o, s) for c, p, o, s in zip(ids, rows["part"], rows["audio_offset"], rows["audio_bytes"])},
        recordings=dict(zip(ids, rows["recording"])),
        credits={c: dict(zip(CREDIT_NAMES, v)) for c, *v in zip(ids, *(rows[n] for n in CREDIT_NAMES))},
        generated=frozenset(c for c, made in zip(ids, rows["generated"]) if made),
    )


def image_credits_of(image_credits: pa.Table, image_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """image_id -> its credit (the IMAGE_CREDITS row, without the `image_` prefix of its columns) for
    the ids asked for that the table holds, looked up without copying the run-sized table."""
    wanted = pa.array(sorted(set(image_ids)), pa.string())
    positions = pc.index_in(wanted, value_set=image_credits.column("image_id"))
    rows = image_credits.take(positions.filter(pc.is_valid(positions))).to_pydict()
    return {
        image_id: dict(zip(CREDIT_NAMES, values))
        for image_id, *values in zip(rows["image_id"], *(rows[f"image_{n}"] for n in CREDIT_NAMES))
    }


def clips_by_split(recordings: Mapping[str, str], splits: Mapping[str, float]) -> dict[str, set[str]]:
    """The clip ids of each split, a clip going where its source recording goes
    (sonify.split_by_clip), by the recording's content: copies of one file go together, and a
    variant keeps its parent's source columns, so it goes with its parent."""
    grouped: dict[str, set[str]] = {name: set() for name in splits}
    for clip_id, recording in recordings.items():
        grouped[split_of(recording, splits, SOURCE)].add(clip_id)
    return grouped


def clip_locations(clips: pa.Table, rate: int, clip_ids: Iterable[str]) -> dict[str, tuple[str, int, int]]:
    """Where the audio at `rate` of each of `clip_ids` is, from pool table rows (clip_id, part,
    loudness_at_rates), audible at that rate or not: rendering mixes again what a manifest names,
    whatever the audibility settings it is rendered with."""
    wanted = clips.filter(pc.is_in(clips.column("clip_id"), value_set=pa.array(sorted(set(clip_ids)), pa.string())))
    located = {}
    for clip_id, part, at_rates in zip(
        *[wanted.column(c).to_pylist() for c in ("clip_id", "part", "loudness_at_rates")]
    ):
        entry = next((e for e in at_rates or [] if e["sample_rate"] == rate), None)
        if entry is not None and entry["audio_bytes"] is not None:
            located[clip_id] = (part, entry["audio_offset"], entry["audio_bytes"])
    return located


def plan_samples(
    config: RunConfig,
    scenes: pa.Table,
    found: Matches,
    clip_lufs: Mapping[str, float],
    corrected: Corrected | None = None,
    split_clips: Mapping[str, set[str]] | None = None,
    clip_credits: Mapping[str, Mapping[str, str | None]] | None = None,
    image_credits: Mapping[str, Mapping[str, str | None]] | None = None,
    generated_clips: frozenset[str] = frozenset(),
) -> tuple[list[dict], list[dict], Counter]:
    """Manifest rows of every sample (audio fields still empty, sorted by key) and of every rejected
    scene, and the counts of dropped concepts and threshold fallbacks. A concept whose clip is in
    `generated_clips` is marked `generated`. retrieval.max_uses_per_clip counts uses over the scenes
    given (a chunk), taken in key order so that the order of the rows does not matter. Each concept
    carries its clip's credit and each row its image's, from `clip_credits` and `image_credits`
    (null where they hold none).

    With sonify.splits, each row gets its image's split. `split_clips` (sonify.split_by_clip): the
    clips of each split, the only ones its samples may use. Each sample is then also chosen as it
    would be without the rule (from the same uses so far), to count the concepts the rule dropped,
    whose reason becomes `other_split`, and those it gave another clip."""
    clip_credits = clip_credits or {}
    image_credits = image_credits or {}
    samples, rejected, counts = [], [], Counter()
    uses: Counter = Counter()
    splits = config.sonify.splits
    ambience = [v.name for v in config.models.vlm if isinstance(v, MapperVlmConfig) and v.mode == "ambience"]
    keyed = sorted(
        (
            (sample_key(scene["image_id"], scene["vlm"]), scene)
            for scene in with_ambience(planning_scenes(scenes).to_pylist(), ambience)
        ),
        key=lambda pair: pair[0],
    )
    for key, scene in keyed:
        row = {
            "key": key,
            "image_id": scene["image_id"],
            "image_uri": scene["uri"],
            "image_member": scene["member"],
            "image_format": scene["format"],
            "width": scene["width"],
            "height": scene["height"],
            "vlm": scene["vlm"],
            "prompt_version": config.prompt.version,
            "caption": scene["caption"],
            **{f"image_{k}": v for k, v in image_credits.get(scene["image_id"], NO_CREDIT).items()},
            "sample_rate": config.mix.sample_rate,
            "duration_s": config.pool.clip_seconds,
            "seed": config.seed,
            "error": scene["error"] or (f"dropped: {scene['dropped']}" if scene["dropped"] else None),
            "error_kind": scene["error_kind"] if scene["error"] else scene["dropped"],
            "concepts": [],
            "dropped_concepts": scene["dropped_empty_concepts"] or 0,
            "dropped": [],
            "split": split_of(scene["image_id"], splits) if splits else None,
            **dict.fromkeys(WRITE_TIME_COLUMNS),
        }
        if row["error"]:
            rejected.append(row)
            continue
        texts = [query_of(c, scene["image_id"]) for c in scene["concepts"]]
        retrieval = config.retrieval

        def choose(usable: Container[str], counted: Counter) -> list[ConceptChoice | DroppedConcept]:
            return choose_clips(
                texts,
                found,
                config.seed,
                key,
                retrieval.k,
                retrieval.ssr,
                retrieval.min_cosine,
                usable,
                corrected=corrected,
                uses=counted,
                max_uses=retrieval.max_uses_per_clip,
            )

        unrestricted = None if split_clips is None else choose(clip_lufs, Counter(uses))
        choices = choose(clip_lufs if split_clips is None else split_clips[row["split"]], uses)
        if unrestricted is not None:
            # Dropped here and chosen without the rule: the pool has the sound, in another split.
            # Dropped either way: for the reason it has without the rule, which is what the pool lacks.
            choices = [
                (DroppedConcept("other_split", choice.best_cosine) if isinstance(free, ConceptChoice) else free)
                if isinstance(choice, DroppedConcept) and choice.reason in MISSING_REASONS
                else choice
                for choice, free in zip(choices, unrestricted)
            ]
            counts["concepts_rechosen_for_split"] += sum(
                isinstance(c, ConceptChoice) and isinstance(f, ConceptChoice) and c.clip_id != f.clip_id
                for c, f in zip(choices, unrestricted)
            )
        kept = [(c, choice) for c, choice in zip(scene["concepts"], choices) if isinstance(choice, ConceptChoice)]
        row["dropped"] = [
            {
                "label": c["label"],
                "text": c["text"],
                "source": concept_source(c),
                "reason": choice.reason,
                "best_cosine": choice.best_cosine,
            }
            for c, choice in zip(scene["concepts"], choices)
            if isinstance(choice, DroppedConcept)
        ]
        counts.update(f"concepts_{d['reason']}" for d in row["dropped"])
        counts["mapped_concepts_missing"] += sum(
            d["source"] == "mapper" and d["reason"] in MISSING_REASONS for d in row["dropped"]
        )
        row["dropped_concepts"] += len(row["dropped"])
        if not kept:
            why = Counter(d["reason"] for d in row["dropped"])
            row["error"] = (
                "dropped: no concept matched a pool clip audible at the mix rate, at or above retrieval.min_cosine "
                "and under retrieval.max_uses_per_clip"
                + (" in the sample's split" if split_clips is not None else "")
                + f" ({', '.join(f'{n} {reason}' for reason, n in sorted(why.items()))})"
            )
            row["error_kind"] = "no_usable_clip"
            rejected.append(row)
            continue
        targets = draw_targets(
            concept_rng(config.seed, key, 0, "loudness"), len(kept), config.mix.lufs_min, config.mix.lufs_max
        )
        lufs = np.array([clip_lufs[choice.clip_id] for _, choice in kept])
        for (concept, choice), target, clip_level, gain in zip(kept, targets, lufs, gains_db(targets, lufs)):
            row["concepts"].append(
                {
                    "label": concept["label"],
                    "text": concept["text"],
                    "source": concept_source(concept),
                    "clip_id": choice.clip_id,
                    "cosine": choice.cosine,
                    "corrected_cosine": choice.corrected,
                    "ssr": choice.ssr,
                    "threshold": choice.threshold,
                    "n_candidates": choice.n_candidates,
                    "fallback": choice.fallback,
                    "generated": choice.clip_id in generated_clips,
                    "target_lufs": float(target),
                    "clip_lufs": float(clip_level),
                    "gain_db": float(gain),
                    **clip_credits.get(choice.clip_id, NO_CREDIT),
                }
            )
        samples.append(row)
        counts["fallbacks"] += sum(c.fallback for _, c in kept)
    return sorted(samples, key=lambda r: r["key"]), rejected, counts


def concept_source(concept: Mapping) -> str:
    """The manifest's `source` of a planned concept: mapper where it is mapped, else text."""
    return "mapper" if concept["mapped"] else "text"


def shard_groups(samples: list[dict], image_bytes: Mapping[str, int], config: RunConfig) -> list[list[dict]]:
    """Samples (in key order) cut into shards of about sonify.shard_size_mb, each shard of one split
    (splits in their configured order). An image's size in the shard is estimated by its source's,
    a mix's by its FLAC at the mix rate."""
    flac_estimate = int(config.mix.sample_rate * config.pool.clip_seconds * FLAC_BYTES_PER_SAMPLE)
    groups: list[list[dict]] = []
    for split in config.sonify.splits or [None]:
        members = [s for s in samples if s["split"] == split]
        sizes = [image_bytes.get(s["key"], 0) + flac_estimate for s in members]
        start = len(groups)
        for sample, index in zip(members, plan_shards(sizes, int(config.sonify.shard_size_mb * 1e6))):
            if start + index == len(groups):
                groups.append([])
            groups[start + index].append(sample)
    return groups


def manifest_table(rows: list[dict]) -> pa.Table:
    return make_table(MANIFEST, {name: [row[name] for row in rows] for name in MANIFEST.names})


def shard_plan(manifest: pa.Table, locations: Locations) -> pa.Table:
    """The plan of one shard: its manifest rows, each with the audio location of every concept's clip."""
    concepts = manifest.column("concepts").to_pylist()
    missing = sorted({c["clip_id"] for row in concepts for c in row if c["clip_id"] not in locations})
    if missing:
        raise UnknownClips(
            f"{len(missing)} clips of the manifest are not in the pool (first: {', '.join(missing[:3])}): "
            "pool.dir must be the pool the manifest was made from, with none of its sources pruned"
        )
    located = [[dict(zip(("part", "offset", "size"), locations[c["clip_id"]])) for c in row] for row in concepts]
    return make_table(
        SHARD_PLANS,
        manifest.append_column("clip_locations", pa.array(located, SHARD_PLANS.field("clip_locations").type)),
    )


def missing_texts(rows: Iterable[dict]) -> pa.Table:
    """MISSING_TEXTS of manifest rows (samples and rejected scenes): each text dropped for a reason
    of MISSING_REASONS, how many concepts asked for it and why they got nothing, the best cosine
    the pool reached, and its first images by image id; sorted by text. Mapped concepts have no
    text and are left out (plan_samples counts them as mapped_concepts_missing)."""
    found: dict[str, dict] = {}
    for row in rows:
        for dropped in row["dropped"]:
            if dropped["reason"] not in MISSING_REASONS or dropped["text"] is None:
                continue
            entry = found.setdefault(
                dropped["text"],
                {"requests": 0, "best_cosine": None, "examples": {}, **dict.fromkeys(MISSING_REASONS, 0)},
            )
            entry["requests"] += 1
            entry[dropped["reason"]] += 1
            if dropped["best_cosine"] is not None:
                best = entry["best_cosine"]
                entry["best_cosine"] = max(dropped["best_cosine"], -np.inf if best is None else best)
            entry["examples"][row["image_id"]] = {
                "image_id": row["image_id"],
                "image_uri": row["image_uri"],
                "image_member": row["image_member"],
            }
    texts = sorted(found)
    entries = [found[t] for t in texts]
    return make_table(
        MISSING_TEXTS,
        {
            "text": texts,
            **{name: [e[name] for e in entries] for name in ("requests", *MISSING_REASONS, "best_cosine")},
            "examples": [[e["examples"][i] for i in sorted(e["examples"])[:MISSING_EXAMPLES]] for e in entries],
        },
    )


@dataclass(frozen=True)
class ChunkPlan:
    shards: list[pa.Table]  # SHARD_PLANS tables, in shard order
    rejected: pa.Table  # MANIFEST rows of the scenes that became no sample
    missing: pa.Table  # MISSING_TEXTS of the chunk
    stats: dict  # CHUNK_COUNTS, the shard count and the first rejection reasons


def plan_chunk(
    config: RunConfig,
    scenes: pa.Table,
    matches: pa.Table,
    mix_clips: pa.Table,
    image_credits: pa.Table | None = None,
) -> ChunkPlan:
    """The plan of one chunk from its scenes (every VLM's), its matches, the pool's MIX_CLIPS and the
    run's IMAGE_CREDITS (None: no image has one)."""
    found = matches_by_text(matches)
    clips = mixable_clips(mix_clips, (c for ids, _ in found.values() for c in ids))
    split_clips = clips_by_split(clips.recordings, config.sonify.splits) if config.sonify.split_by_clip else None
    samples, rejected, counts = plan_samples(
        config,
        scenes,
        found,
        clips.lufs,
        corrected_by_text(matches),
        split_clips,
        generated_clips=clips.generated,
        clip_credits=clips.credits,
        image_credits=(
            image_credits_of(image_credits, scenes.column("image_id").to_pylist())
            if image_credits is not None
            else None
        ),
    )
    image_bytes = {
        sample_key(i, v): n or 0
        for i, v, n in zip(*[scenes.column(c).to_pylist() for c in ("image_id", "vlm", "num_bytes")])
    }
    groups = shard_groups(samples, image_bytes, config)
    shards = [shard_plan(manifest_table(rows), clips.locations) for rows in groups]
    stats = {
        "shards": len(shards),
        "shard_splits": [rows[0]["split"] for rows in groups],
        "samples": len(samples),
        "rejected": len(rejected),
        "concepts_below_min_cosine": counts["concepts_below_min_cosine"],
        "concepts_no_usable_clip": counts["concepts_no_usable_clip"],
        "concepts_clip_cap": counts["concepts_clip_cap"],
        "concepts_other_split": counts["concepts_other_split"],
        "concepts_rechosen_for_split": counts["concepts_rechosen_for_split"],
        "mapped_concepts_missing": counts["mapped_concepts_missing"],
        "fallbacks": counts["fallbacks"],
        "rejection_reasons": [r["error"] for r in rejected][:MAX_REPORTED_REASONS],
    }
    return ChunkPlan(shards, manifest_table(rejected), missing_texts([*samples, *rejected]), stats)
