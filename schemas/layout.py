"""Folder layouts: where each file of pool.dir and sonify.out lives (their report/ folders: in
schemas/report_layout.py).

A layout is a contract like a schema: readers and writers on any node must agree on every name, and
a later version of the pipeline must find what an earlier one wrote. So one class per folder
builds every path in it, and nothing else spells a folder or file name. Layouts are pure string
builders over fsspec URLs (`memory://`, `s3://`, local paths alike); they touch no storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

# Rejected scenes share the manifest folder with the shards' parts; layout 1 kept them all in one
# `rejected.parquet`, which released manifests may still hold.
REJECTED_STEM = "rejected"


def folder_url(url: str) -> str:
    """A folder's URL as every layout spells it: without a trailing `/`, so that `out/` and `out`
    name the same files and a summary or report shows one spelling. The one place URLs are normalized."""
    return url.rstrip("/")


def join(base: str, *parts: str) -> str:
    """`base/part/...`: fsspec URLs join with `/` on every file system."""
    return "/".join([folder_url(base), *[p.strip("/") for p in parts]])


# Chunks and shards are named by their position, zero-padded so that names sort in order.
def chunk_id(index: int) -> str:
    return f"{index:06d}"


def shard_id(index: int, split: str | None = None) -> str:
    """A shard's name: its number, within its split where the run has splits."""
    return f"{index:06d}" if split is None else f"{split}-{index:06d}"


def shard_file(shard: str) -> str:
    """The tar of a shard, by file name: what the manifest's `shard` column records."""
    return f"{shard}.tar"


@dataclass(frozen=True)
class PoolLayout:
    """pool.dir. A part's clips file is written last and marks the part complete; its audio and
    embeddings files without one are an interrupted run's and are deleted."""

    # The format pool.json records; a pool of another format is refused, not read.
    # 2: the clips table has error_kind (pool_clips v2). 3: a pack of the clips at each mix rate per
    # part (audio/<rate>/<part>.tar), located by loudness_at_rates (pool_clips v3). 4: variant clips
    # (pool_clips v4). 5: licence and attribution columns, generated sources (generated/) and their
    # provenance (pool_clips v5).
    FORMAT: ClassVar[int] = 5

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", folder_url(self.root))

    def pool_meta(self) -> str:
        """What the pool was built with (CLAP, rates, clip length); later runs must match."""
        return join(self.root, "pool.json")

    def config(self) -> str:
        """The resolved config of the last run."""
        return join(self.root, "config.yaml")

    def summary(self) -> str:
        """The last run's summary."""
        return join(self.root, "summary.json")

    def clips_folder(self) -> str:
        return join(self.root, "clips")

    def clips(self, part: str) -> str:
        """The pool table's rows of one part (and its failed files)."""
        return join(self.clips_folder(), f"{part}.parquet")

    def audio_folder(self) -> str:
        return join(self.root, "audio")

    def audio(self, part: str) -> str:
        """The part's clips as 16-bit FLAC, one row per clip."""
        return join(self.audio_folder(), f"{part}.parquet")

    def mix_audio_folder(self, rate: int) -> str:
        return join(self.audio_folder(), str(rate))

    def mix_audio(self, part: str, rate: int) -> str:
        """The part's clips as a mix at `rate` decodes them: a tar of `<clip_id>.flac` (16-bit FLAC at
        that rate), each read by its byte range."""
        return join(self.mix_audio_folder(rate), f"{part}.tar")

    def embeddings_folder(self) -> str:
        return join(self.root, "embeddings")

    def embeddings(self, part: str) -> str:
        """CLAP audio embeddings of the part's non-silent clips."""
        return join(self.embeddings_folder(), f"{part}.parquet")

    def index_folder(self) -> str:
        return join(self.root, "index")

    def index_file(self) -> str:
        """The FAISS index over every embedding."""
        return join(self.index_folder(), "index.faiss")

    def index_ids(self) -> str:
        """Index row -> clip_id."""
        return join(self.index_folder(), "ids.parquet")

    def index_meta(self) -> str:
        """Kind built, settings, size and the parts covered; written last, so it marks the index current."""
        return join(self.index_folder(), "index.json")

    def report_folder(self) -> str:
        """The HTML report; its files are named by ReportLayout."""
        return join(self.root, "report")

    def generated_folder(self) -> str:
        """What `run_pipeline.py generate` made: sounds from text, sources of the pool like any recording."""
        return join(self.root, "generated")

    def generated_audio_folder(self) -> str:
        return join(self.generated_folder(), "audio")

    def generated_audio(self, file: str) -> str:
        """A generated sound, a FLAC file named by a hash of how it was made (stages.audio.generation)."""
        return join(self.generated_audio_folder(), file)

    def generated_records_folder(self) -> str:
        return join(self.generated_folder(), "records")

    def generated_records(self, batch: str) -> str:
        """How each sound of one generate run was made (GENERATED_SOUNDS); written after its files,
        so a generated file is a source of the pool once its record exists."""
        return join(self.generated_records_folder(), f"{batch}.parquet")

    def part_folders(self, mix_rates: Iterable[int]) -> tuple[str, ...]:
        """The folders holding one file per part, in a pool with these mix rates."""
        return (
            self.clips_folder(),
            self.audio_folder(),
            *(self.mix_audio_folder(r) for r in mix_rates),
            self.embeddings_folder(),
        )

    def temporary_folders(self, mix_rates: Iterable[int]) -> list[str]:
        """Folders a pool or generate run with these mix rates writes, where killed writes may have left
        temporary files."""
        return [
            self.root,
            *self.part_folders(mix_rates),
            self.index_folder(),
            self.generated_audio_folder(),
            self.generated_records_folder(),
        ]


@dataclass(frozen=True)
class SonifyLayout:
    """sonify.out (and render.out, which holds the plans, manifest and shards only). Each phase is
    materialized here, so that a rerun skips what is done and each can be queried.

    A run builds its layout once and hands it to its phases and stages; a layout pickles as its
    root, so Ray workers get the same object."""

    # The version layout.json records; a rerun into a folder of another version is refused.
    # 1: scenes/<vlm>.parquet and manifest/rejected.parquet; 2: per chunk, with images.parquet and plans/;
    # 3: one image member name for every sample (sonify.image_format), shards no longer split by format;
    # 4: matches and shard plans per chunk (matches/, plans/CCCCCC-PPPPPP.parquet), mix_clips.parquet;
    # 5: hubness/ (the bank and the clips' biases), corrected scores in matches and manifest;
    # 6: missing/ per chunk and the run's missing sounds, dropped concepts in the manifest;
    # 7: licences: each clip's credit in mix_clips.parquet, image_credits.parquet, ATTRIBUTION.md/.csv;
    # 8: mapper scene sources: concept vectors in scenes/, mapped concepts' rows in matches/.
    VERSION: ClassVar[int] = 8

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", folder_url(self.root))

    def images(self) -> str:
        """The listing, sorted by image id; made once, so a rerun resumes over the same images."""
        return join(self.root, "images.parquet")

    def images_counts(self) -> str:
        """The listing's counts; written before the listing, which marks it complete."""
        return join(self.root, "images.json")

    def scenes_folder(self) -> str:
        return join(self.root, "scenes")

    def vlm_scenes_folder(self, vlm: str) -> str:
        return join(self.scenes_folder(), vlm)

    def scenes(self, vlm: str, chunk: str) -> str:
        """Every image of a chunk as one VLM saw it: caption, concepts, or why it stops."""
        return join(self.vlm_scenes_folder(vlm), f"{chunk}.parquet")

    def mix_clips(self) -> str:
        """The pool clips a mix at mix.sample_rate may use: loudness at that rate and where their audio
        is. Derived from the pool, and written anew by every run until a chunk has been searched (after
        that the pool may not change); planning tasks read it."""
        return join(self.root, "mix_clips.parquet")

    def image_credits(self) -> str:
        """The credit of every listed image that sonify.image_metadata names; written with mix_clips,
        and by the same rule."""
        return join(self.root, "image_credits.parquet")

    def attribution_csv(self) -> str:
        """One row per clip and image used whose licence asks for credit (stages.licences.spdx.requires_credit)."""
        return join(self.root, "ATTRIBUTION.csv")

    def attribution_md(self) -> str:
        """The same credits as a page to publish with the dataset."""
        return join(self.root, "ATTRIBUTION.md")

    def matches_folder(self) -> str:
        return join(self.root, "matches")

    def matches(self, chunk: str) -> str:
        """Top-K pool clips of every distinct concept text of a chunk."""
        return join(self.matches_folder(), f"{chunk}.parquet")

    def search_stats(self, chunk: str) -> str:
        """How a chunk's texts were searched (texts, index setting, recall measured on its queries);
        written after its matches, so it marks the chunk searched."""
        return join(self.matches_folder(), f"{chunk}.json")

    def hubness_folder(self) -> str:
        return join(self.root, "hubness")

    def hub_bank(self) -> str:
        """The hubness bank: concept texts sampled before the first chunk is searched, their
        embeddings and nearest clips; made once, so a rerun corrects with the same bank."""
        return join(self.hubness_folder(), "bank.parquet")

    def clip_biases(self) -> str:
        """Each indexed clip's bias against the bank; a pool extended before retrieval adds its new clips."""
        return join(self.hubness_folder(), "biases.parquet")

    def hubness_stats(self) -> str:
        """The pool's hubness and the correction's centre and spread; written last, so it marks the
        bank and the biases complete."""
        return join(self.hubness_folder(), "hubness.json")

    def plans_folder(self) -> str:
        return join(self.root, "plans")

    def plan(self, shard: str) -> str:
        """What a shard of render.out will hold: its manifest rows before mixing, and where its clips are."""
        return join(self.plans_folder(), f"{shard}.parquet")

    def chunk_shard_plan(self, chunk: str, position: int) -> str:
        """The plan of a chunk's shard, by its position in the chunk: planning tasks run side by side
        and cannot know the shard numbers before them; the driver numbers shards once all are planned."""
        return join(self.plans_folder(), f"{chunk}-{position:06d}.parquet")

    def chunk_plan(self, chunk: str) -> str:
        """A chunk's shard count and planning counts; written last, so it marks the chunk planned."""
        return join(self.plans_folder(), f"chunk-{chunk}.json")

    def missing_folder(self) -> str:
        return join(self.root, "missing")

    def missing_texts(self, chunk: str) -> str:
        """The concept texts of a chunk that got no usable clip; written before the chunk's plan stats."""
        return join(self.missing_folder(), f"{chunk}.parquet")

    def missing_sound_texts(self) -> str:
        """Every distinct missing text of the run and the group it joined."""
        return join(self.root, "missing_sound_texts.parquet")

    def missing_sounds(self) -> str:
        """The run's missing sounds by group of near-identical texts, most requested first: what
        `run_pipeline.py generate` can make (generate.missing_from)."""
        return join(self.root, "missing_sounds.parquet")

    def missing_sounds_stats(self) -> str:
        """The grouping settings and counts of the missing-sounds files; written after both, so it
        marks them complete for those settings."""
        return join(self.root, "missing_sounds.json")

    def manifest_folder(self) -> str:
        return join(self.root, "manifest")

    def manifest(self, shard: str) -> str:
        """The manifest rows of a shard; written after the shard, so it marks the shard complete."""
        return join(self.manifest_folder(), f"{shard}.parquet")

    def rejected(self, chunk: str) -> str:
        """Scenes of a chunk that became no sample, with the reason."""
        return join(self.manifest_folder(), f"{REJECTED_STEM}-{chunk}.parquet")

    def is_rejected(self, url: str) -> bool:
        """Whether a file of the manifest folder holds rejected scenes rather than a shard's rows."""
        return url.rsplit("/", 1)[-1].startswith(REJECTED_STEM)

    def shards_folder(self) -> str:
        return join(self.root, "shards")

    def shard(self, shard: str) -> str:
        """The WebDataset tar of a shard."""
        return self.shard_named(shard_file(shard))

    def shard_named(self, file_name: str) -> str:
        """The tar that a manifest row names in its `shard` column."""
        return join(self.shards_folder(), file_name)

    def layout_version(self) -> str:
        """The version of this layout; a rerun into a folder of another layout is refused."""
        return join(self.root, "layout.json")

    def pool_state(self) -> str:
        """The pool index the run retrieves from (its parts and size)."""
        return join(self.root, "pool_state.json")

    def config(self) -> str:
        """The resolved config; a rerun with other settings is refused."""
        return join(self.root, "config.yaml")

    def summary(self) -> str:
        """Counts per stage, error reasons, seconds per phase."""
        return join(self.root, "summary.json")

    def card(self) -> str:
        """The dataset card, which Hugging Face `datasets` reads: the splits' shards, the features,
        the licences, and how the data was made; written last by every run."""
        return join(self.root, "README.md")

    def report_folder(self) -> str:
        """The HTML report; its files are named by ReportLayout."""
        return join(self.root, "report")

    def shard_folders(self) -> list[str]:
        """The folders that writing shards fills; all that render writes."""
        return [self.plans_folder(), self.manifest_folder(), self.shards_folder()]

    def temporary_folders(self, vlms: Iterable[str]) -> list[str]:
        """Folders a sonify run with these VLMs writes, where killed writes may have left temporary files."""
        return [
            self.root,
            self.matches_folder(),
            self.hubness_folder(),
            self.missing_folder(),
            *self.shard_folders(),
            *(self.vlm_scenes_folder(v) for v in vlms),
        ]
