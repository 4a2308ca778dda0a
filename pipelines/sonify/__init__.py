"""The sonify pipeline: images -> VLM sounding concepts -> CLAP retrieval -> mixes -> shards.

One module per phase, each materialized in sonify.out (laid out by schemas.layout.SonifyLayout) so
a rerun skips what is done and each can be queried:
- listing: every image, sorted by id and cut into chunks of sonify.images_per_chunk, made once;
- scenes: each VLM's answers, one file per chunk, written as the chunk completes;
- retrieval: each chunk's distinct concept texts embedded and searched on a worker (matches/);
- planning: each chunk planned on a worker (plans/), then its shards numbered on the driver;
- writing: each shard mixed and written on a worker, then its manifest part, which marks it done;
- run: the phases in order, and the summary.

The driver holds the listing (about 100 bytes per image) while scenes are made, then only counts,
the chunk list and one row per shard; everything that grows with the concept texts or the samples
stays on workers and in files. `render` rebuilds the shards from a manifest and the pool alone,
with the same write stage.
"""

from pipelines.sonify.checks import SonifyError
from pipelines.sonify.run import format_summary, run_sonify
from pipelines.sonify.writing import run_render

__all__ = ["SonifyError", "format_summary", "run_render", "run_sonify"]
