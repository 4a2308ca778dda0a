"""The pool pipeline: audio files -> standardized clips, loudness, CLAP embeddings, FAISS index.

pool.dir is laid out by schemas.layout.PoolLayout: per part a clips file (the pool table, written
last, so it marks the part complete), an audio file, a pack per mix rate and an embeddings file; the
index; the pool's settings, the last run's config and summary.

A part is a group of source files processed together. Re-running adds parts for new or changed
sources only; rows of a changed source are removed from their old part, and the index grows.

One module per phase, and the store:
- plan: which sources to (re)process, in which parts, and which stored rows they make stale;
- parts: the part files on disk: an interrupted run's removed, stale rows pruned, parts written;
- index: the FAISS index brought up to the embeddings on disk;
- summary: the pool's totals and the run's summary text;
- run: the phases in order (`run_pool`);
- store: `PoolStore`, the one way sonify, render and report read a pool.
"""

from importlib import import_module

from pipelines.pool.store import PoolMismatch, PoolStore

# The run imports Ray; a reader of a pool (report) imports the store alone, so these are imported
# on first use.
_RUN_NAMES = {"run_pool": "pipelines.pool.run", "format_summary": "pipelines.pool.summary"}

__all__ = ["PoolMismatch", "PoolStore", "format_summary", "run_pool"]


def __getattr__(name: str):
    if name not in _RUN_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_RUN_NAMES[name]), name)
