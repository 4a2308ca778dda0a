"""The run's missing sounds: every chunk's missing texts merged, grouped and listed, once all chunks
are planned.

One actor runs it. DuckDB merges the chunks' MISSING_TEXTS files by text (its aggregation spills to
disk, so no process holds every text) and streams the merged texts most requested first; each batch
is embedded with the run's CLAP text encoder and grouped (stages.search.text_groups) as it comes.
Every text goes to missing_sound_texts.parquet as it is grouped; a group's counts are held while
later texts may still join it (at most sonify.missing_sounds.max_groups groups), and DuckDB then
sorts the groups into missing_sounds.parquet. missing_sounds.json, written last, records the
grouping settings and counts: a rerun with the same settings leaves the files alone, one with other
settings groups again.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import CHUNK_TASKS, MISSING_SOUND_TEXTS, MISSING_SOUNDS, MISSING_TEXTS, make_table
from schemas.config import ClapConfig, MissingSoundsConfig, RetrievalConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.base import Resources
from stages.embed.clap import load_clap
from stages.io import storage
from stages.report.sql import connect
from stages.search.search_stage import ChunkTextStage, embed
from stages.search.text_groups import TextGroups

# Texts embedded and grouped per step.
TEXTS_PER_BATCH = 2048
# The most requested texts a group lists beside its count.
MEMBER_TEXTS = 5
# Example images kept per text and per group.
EXAMPLES = 3
COUNTS = ("requests", "below_min_cosine", "no_usable_clip")

MERGE_TEXTS = f"""
SELECT text,
       {", ".join(f"sum({c})::BIGINT AS {c}" for c in COUNTS)},
       max(best_cosine) AS best_cosine,
       list_slice(list_sort(flatten(list(examples))), 1, {EXAMPLES}) AS examples
FROM missing GROUP BY text ORDER BY requests DESC, text
"""


class Group:
    """The counts of one group so far, and its first texts and images."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.texts = 0
        self.members: list[str] = []
        self.counts = dict.fromkeys(COUNTS, 0)
        self.best_cosine: float | None = None
        self.examples: dict[str, dict] = {}

    def add(self, row: dict) -> None:
        self.texts += 1
        if len(self.members) < MEMBER_TEXTS:
            self.members.append(row["text"])
        for name in COUNTS:
            self.counts[name] += row[name]
        if row["best_cosine"] is not None:
            self.best_cosine = max(row["best_cosine"], -np.inf if self.best_cosine is None else self.best_cosine)
        for example in row["examples"]:
            self.examples.setdefault(example["image_id"], example)
        self.examples = {i: self.examples[i] for i in sorted(self.examples)[:EXAMPLES]}

    def row(self) -> dict:
        return {
            "text": self.text,
            "texts": self.texts,
            "member_texts": self.members,
            **self.counts,
            "best_cosine": self.best_cosine,
            "examples": list(self.examples.values()),
        }


def groups_table(groups: list[Group]) -> pa.Table:
    rows = [g.row() for g in groups]
    return make_table(MISSING_SOUNDS, {name: [r[name] for r in rows] for name in MISSING_SOUNDS.names})


class ListMissingSounds(ChunkTextStage):
    name: ClassVar[str] = "list_missing_sounds"

    def __init__(
        self,
        pool: PoolLayout,
        layout: SonifyLayout,
        vlms: list[str],
        clap: ClapConfig,
        retrieval: RetrievalConfig,
        grouping: MissingSoundsConfig,
    ) -> None:
        super().__init__(pool, layout, vlms, clap, retrieval)
        self.grouping = grouping
        self.model = None

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=1, batch_size=None)

    def output_schema(self) -> pa.Schema:
        return CHUNK_TASKS

    def settings(self) -> dict:
        return {"group_cosine": self.grouping.group_cosine, "max_groups": self.grouping.max_groups}

    def process_batch(self, batch: pa.Table) -> pa.Table:
        done = self.layout.missing_sounds_stats()
        if storage.exists(done) and json.loads(storage.read_bytes(done))["settings"] == self.settings():
            return batch
        urls = [self.layout.missing_texts(chunk) for chunk in sorted(batch.column("chunk").to_pylist())]
        with (
            tempfile.TemporaryDirectory(prefix="sonify-missing-") as scratch,
            connect({"missing": (urls, MISSING_TEXTS)}) as con,
        ):
            con.execute(f"SET temp_directory = '{os.path.join(scratch, 'spill').replace(chr(39), chr(39) * 2)}'")
            unsorted = os.path.join(scratch, "groups.parquet")
            stats = self.group(con, unsorted)
            sorted_groups = con.sql(
                "SELECT * FROM read_parquet($path) ORDER BY requests DESC, text", params={"path": unsorted}
            ).to_arrow_reader(TEXTS_PER_BATCH)
            write_batches(self.layout.missing_sounds(), MISSING_SOUNDS, sorted_groups)
        storage.write_text(done, json.dumps({"settings": self.settings(), **stats}) + "\n")
        return batch

    def group(self, con: duckdb.DuckDBPyConnection, unsorted: str) -> dict:
        """Groups the merged texts, writing each text's row to missing_sound_texts.parquet and each
        group's to `unsorted`; the counts of texts, groups and requests."""
        groups: TextGroups | None = None
        held: dict[int, Group] = {}
        texts = requests = count = 0
        with (
            storage.open_for_writing(self.layout.missing_sound_texts()) as texts_file,
            pq.ParquetWriter(texts_file, MISSING_SOUND_TEXTS, compression="zstd") as texts_out,
            pq.ParquetWriter(unsorted, MISSING_SOUNDS, compression="zstd") as groups_out,
        ):
            for merged in con.sql(MERGE_TEXTS).to_arrow_reader(TEXTS_PER_BATCH):
                rows = pa.Table.from_batches([merged]).to_pylist()
                if self.model is None:
                    self.model = load_clap(self.clap_config)
                vectors = embed(self.model, [row["text"] for row in rows], self.clap_config.batch_size)
                if groups is None:
                    groups = TextGroups(vectors.shape[1], self.grouping.group_cosine, self.grouping.max_groups)
                assignment = groups.assign(vectors)
                alone: list[Group] = []
                names = []
                for row, index, leads, kept in zip(rows, assignment.groups, assignment.leads, assignment.held):
                    if leads:
                        group = Group(row["text"])
                        if kept:
                            held[int(index)] = group
                        else:
                            alone.append(group)
                    else:
                        group = held[int(index)]
                    group.add(row)
                    names.append(group.text)
                texts_out.write_table(
                    make_table(
                        MISSING_SOUND_TEXTS,
                        pa.Table.from_batches([merged])
                        .append_column("group_text", pa.array(names, pa.string()))
                        .append_column("cosine_to_group", pa.array(assignment.cosines, pa.float64())),
                    )
                )
                if alone:
                    groups_out.write_table(groups_table(alone))
                texts += len(rows)
                requests += sum(row["requests"] for row in rows)
                count = groups.count
            if held:
                groups_out.write_table(groups_table(list(held.values())))
        return {"texts": texts, "groups": count, "requests": requests}


def write_batches(url: str, schema: pa.Schema, batches: pa.RecordBatchReader) -> None:
    """A Parquet file of `schema` at `url`, from batches of its columns, one batch in memory at a time."""
    with storage.open_for_writing(url) as handle, pq.ParquetWriter(handle, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(make_table(schema, pa.Table.from_batches([batch])))
