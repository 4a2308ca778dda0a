"""Sounds from text, the plain parts: which prompts to generate, the seed of each and the name of its file.

A prompt's seed is derived from the prompt and the run's seed through SHA-256 (never Python's
`hash()`), so the same prompt gets the same noise on every worker, in every batch and on every
rerun. A sound's file is named by everything that decides its audio (model, prompt, seed, steps,
guidance, length), so a rerun asking for the same sound finds it made, and a changed setting makes
a new file rather than overwriting one the pool already holds.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import PipelineError
from stages.io import storage

log = logging.getLogger(__name__)

# The columns of a sonify run's missing_sounds.parquet that prompts are chosen from.
MISSING_COLUMNS = ("text", "requests", "best_cosine")


class PromptsError(PipelineError):
    """Prompts that cannot be used, named by their file and the reason."""


def prompt_seed(prompt: str, run_seed: int) -> int:
    """The generator seed of a prompt: the first 8 bytes of SHA-256(run seed, prompt), as a
    non-negative int64 (what torch.Generator.manual_seed takes)."""
    digest = hashlib.sha256(f"{run_seed}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sound_file(model: str, prompt: str, seed: int, steps: int, guidance: float, seconds: float) -> str:
    """The file name of a generated sound: a hash of everything that decides its audio."""
    made_with = json.dumps([model, prompt, seed, steps, guidance, seconds], ensure_ascii=False)
    return f"gen-{hashlib.sha256(made_with.encode()).hexdigest()[:24]}.flac"


def read_prompt_file(url: str) -> list[str]:
    """The prompts of a text file, one per line, in file order: surrounding whitespace stripped,
    blank lines skipped, a repeated prompt kept once (and counted in the log). A file that is not
    UTF-8, or holds no prompt, is a PromptsError naming it."""
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise PromptsError(f"prompts file {url} does not exist") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptsError(
            f"prompts file {url}: line {line} is not UTF-8 (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    prompts: dict[str, None] = {}
    repeated = 0
    for line in text.splitlines():
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in prompts:
            repeated += 1
        prompts[prompt] = None
    if not prompts:
        raise PromptsError(f"prompts file {url} holds no prompt (every line is blank)")
    if repeated:
        log.warning("prompts file %s: %d repeated lines; each prompt is generated once", url, repeated)
    return list(prompts)


def top_missing_sounds(url: str, top: int) -> list[str]:
    """The `top` most requested texts of a missing_sounds.parquet (columns text, requests,
    best_cosine), most requested first, ties by text. A file without it, or without those columns,
    is a PromptsError naming the file."""
    if not storage.exists(url):
        raise PromptsError(
            f"missing sounds file {url} does not exist; generate.missing_from must be a finished sonify.out folder"
        )
    try:
        table = storage.read_parquet(url)
    except Exception as exc:
        raise PromptsError(f"missing sounds file {url} is not readable Parquet: {type(exc).__name__}: {exc}") from None
    absent = [c for c in MISSING_COLUMNS if c not in table.column_names]
    if absent:
        columns = ", ".join(table.column_names)
        raise PromptsError(f"missing sounds file {url} has no column {', '.join(absent)} (its columns: {columns})")
    table = table.select(list(MISSING_COLUMNS)).filter(pc.invert(pc.is_null(pc.field("text"))))
    table = table.append_column("stripped", pc.utf8_trim_whitespace(table.column("text")))
    table = table.filter(pc.not_equal(pc.field("stripped"), pa.scalar("")))
    ordered = table.sort_by([("requests", "descending"), ("stripped", "ascending")])
    prompts: dict[str, None] = {}
    for text in ordered.column("stripped").to_pylist():
        if len(prompts) == top:
            break
        prompts.setdefault(text, None)
    if not prompts:
        raise PromptsError(f"missing sounds file {url} lists no text to generate")
    return list(prompts)
