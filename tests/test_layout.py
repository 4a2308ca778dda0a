"""Folder layouts are contracts: the output tables of the docs pages (docs/outputs.md,
docs/report.md) list exactly the files the layout classes name, and every folder a run writes is one
where temporaries are cleaned."""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import pytest

from schemas.layout import PoolLayout, SonifyLayout, chunk_id, shard_file, shard_id
from schemas.report_layout import ReportLayout

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROOT = "memory://bucket/run"
# An example value of every parameter a layout method takes; a method with a parameter not here
# makes these tests fail until one is added.
EXAMPLES = {
    "part": "part-0123456789abcdef",
    "vlm": "qwen25vl",
    "chunk": chunk_id(3),
    "shard": shard_id(12),
    "file_name": shard_file(shard_id(41)),
    "name": "clip-usage",
    "number": 7,
    "position": 5,
    "rate": 16000,
    "file": "gen-0123456789abcdef01234567.flac",
    "batch": "0123456789abcdef",
}
# What the docs tables' placeholders stand for.
PLACEHOLDERS = {
    "NNNNNN": r"\d{6}",
    "PPPPPP": r"\d{6}",
    "NNNN": r"\d{4}",
    "<part>": r"[^/]+",
    "<vlm>": r"[^/]+",
    "<name>": r"[^/]+",
    "<rate>": r"\d+",
    "<file>": r"gen-[0-9a-f]+\.flac",
    "<batch>": r"[0-9a-f]+",
}


def documented_table_paths(page: str, line_prefix: str) -> list[str]:
    """The backquoted paths in the first column of the first table after the line of docs/`page`
    starting with `line_prefix`."""
    lines = (DOCS / page).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(line_prefix))
    header = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    assert lines[header].split("|")[1].strip() == "path"
    paths = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        paths += re.findall(r"`([^`]+)`", line.split("|")[1])
    return paths


def as_pattern(documented_path: str) -> re.Pattern:
    pattern = re.escape(documented_path)
    for placeholder, regex in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(placeholder), regex)
    return re.compile(pattern)


def file_kinds(layout) -> dict[str, str]:
    """method name -> the path it gives for the example arguments, for every method that names a
    file (not a folder, nor a predicate)."""
    kinds = {}
    for name, method in inspect.getmembers(layout, callable):
        if name.startswith(("_", "is_")) or name.endswith(("_folder", "_folders")) or name == "url":
            continue
        arguments = [EXAMPLES[p] for p in inspect.signature(method).parameters]
        kinds[name] = method(*arguments)
    return kinds


def relative(paths: dict[str, str], root: str) -> dict[str, str]:
    assert all(p.startswith(root + "/") for p in paths.values()), paths
    return {name: p.removeprefix(root + "/") for name, p in paths.items()}


TABLES = {
    "pool.dir": ("outputs.md", "## The pool folder: `pool.dir`", lambda: relative(file_kinds(PoolLayout(ROOT)), ROOT)),
    "sonify.out": (
        "outputs.md",
        "## The run folder: `sonify.out`",
        lambda: relative(file_kinds(SonifyLayout(ROOT)), ROOT),
    ),
    "report/": ("report.md", "## The report folder", lambda: file_kinds(ReportLayout)),
}


@pytest.mark.parametrize("folder", sorted(TABLES))
def test_the_documented_output_table_lists_exactly_the_files_of_the_layout(folder):
    page, heading, layout_files = TABLES[folder]
    documented = documented_table_paths(page, heading)
    produced = layout_files()
    patterns = {path: as_pattern(path) for path in documented}
    assert len(documented) == len(set(documented)) and documented
    undocumented = {
        name: path for name, path in produced.items() if not any(p.fullmatch(path) for p in patterns.values())
    }
    ambiguous = {
        name: path for name, path in produced.items() if sum(bool(p.fullmatch(path)) for p in patterns.values()) > 1
    }
    unproduced = [doc for doc, p in patterns.items() if not any(p.fullmatch(path) for path in produced.values())]
    assert undocumented == {}, f"layout files missing from the {folder} table of docs/{page}"
    assert ambiguous == {}
    assert unproduced == [], f"rows of the {folder} table of docs/{page} that no layout method produces"


def test_the_documented_paths_check_tells_folders_and_numbers_apart():
    pattern = as_pattern("manifest/rejected-NNNNNN.parquet")
    assert pattern.fullmatch(SonifyLayout(ROOT).rejected(chunk_id(3)).removeprefix(ROOT + "/"))
    assert not pattern.fullmatch("manifest/rejected-3.parquet")
    assert not as_pattern("audio/<part>.parquet").fullmatch("audio/a/b.parquet")
    assert as_pattern("audio/<rate>/<part>.tar").fullmatch(
        PoolLayout(ROOT).mix_audio("p", 16000).removeprefix(ROOT + "/")
    )
    assert not as_pattern("audio/<rate>/<part>.tar").fullmatch("audio/p.tar")


def test_every_folder_a_run_writes_files_into_is_cleaned_of_temporaries():
    pool = PoolLayout(ROOT)
    rates = [EXAMPLES["rate"], 22050]
    written = {p.rsplit("/", 1)[0] for p in file_kinds(pool).values()} | {pool.mix_audio("p", 22050).rsplit("/", 1)[0]}
    assert written == set(pool.temporary_folders(rates))
    sonify = SonifyLayout(ROOT)
    vlms = [EXAMPLES["vlm"], "other"]
    written = {p.rsplit("/", 1)[0] for p in file_kinds(sonify).values()} | {
        sonify.scenes("other", chunk_id(0)).rsplit("/", 1)[0]
    }
    assert written == set(sonify.temporary_folders(vlms))


def test_render_cleans_the_folders_of_the_files_it_writes():
    out = SonifyLayout(ROOT)
    shard = shard_id(5)
    assert {url.rsplit("/", 1)[0] for url in (out.plan(shard), out.manifest(shard), out.shard(shard))} == set(
        out.shard_folders()
    )


def test_rejected_scenes_are_told_from_shard_parts_in_either_layout_version():
    out = SonifyLayout(ROOT)
    assert out.is_rejected(out.rejected(chunk_id(2)))
    assert out.is_rejected(f"{out.manifest_folder()}/rejected.parquet")
    assert not out.is_rejected(out.manifest(shard_id(2)))
    assert out.manifest(shard_id(2)) != out.rejected(chunk_id(2))


def test_a_shard_is_found_by_the_file_name_its_manifest_rows_record():
    out = SonifyLayout(ROOT)
    assert out.shard_named(shard_file(shard_id(9))) == out.shard(shard_id(9))


@pytest.mark.parametrize("root", ["/data/pool", "s3://bucket/pool", "memory://pool"])
def test_a_trailing_slash_on_the_root_changes_no_path(root):
    assert file_kinds(PoolLayout(root + "/")) == file_kinds(PoolLayout(root))
    assert file_kinds(SonifyLayout(root + "/")) == file_kinds(SonifyLayout(root))
    assert "//" not in PoolLayout(root + "/").clips("p").split("://", 1)[-1]
    # The root itself is normalized, so a summary or a stage shows one spelling of the folder.
    assert PoolLayout(root + "//").root == SonifyLayout(root + "/").root == root
    assert PoolLayout(root + "/") == PoolLayout(root)


@pytest.mark.parametrize("layout", [PoolLayout("s3://bucket/pool/"), SonifyLayout("/data/out/")])
def test_a_layout_survives_pickling_to_a_worker(layout):
    copy = pickle.loads(pickle.dumps(layout))
    assert copy == layout and copy.root == layout.root
    assert file_kinds(copy) == file_kinds(layout)


def test_shard_and_chunk_names_sort_in_number_order():
    numbers = [0, 7, 10, 99, 100, 123456]
    assert sorted(shard_id(n) for n in numbers) == [shard_id(n) for n in numbers]
    assert sorted(chunk_id(n) for n in numbers) == [chunk_id(n) for n in numbers]
