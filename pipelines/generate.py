"""The generate pipeline: prompts -> sounds from a text-to-audio model -> new sources of the pool.

1. The prompts: the `generate.top` most requested texts of a sonify run's missing_sounds.parquet
   (`generate.missing_from`), or a text file (`generate.prompts`).
2. Each prompt gets its seed (SHA-256 of the run seed and the prompt) and its file name (a hash of
   everything that decides its audio); sounds the pool's records already hold are not made again.
3. The generate stage makes the rest on Ray actors (`generate.concurrency`, `generate.num_gpus`),
   writing each as FLAC under pool.dir/generated/audio/; then one records table of this run's
   sounds is written, which makes them sources of the pool.
4. The pool run: it lists the recorded sounds as sources of kind generated beside pool.sources, so
   only they are standardized, measured and embedded, and the index grows by their clips. Each clip
   carries its `generation` (model, prompt, seed, steps, guidance) in the pool table.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import pyarrow as pa

from pipelines.config import ConfigError
from pipelines.pool.run import run_pool
from pipelines.pool.store import PoolStore
from pipelines.pool.summary import format_summary as pool_summary
from pipelines.ray_runner import Runner
from schemas import GENERATED_SOUNDS, GENERATION_REQUESTS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.audio.generate_stage import GenerateSounds
from stages.audio.generation import prompt_seed, read_prompt_file, sound_file, top_missing_sounds
from stages.embed.clap import clap_identity
from stages.io import storage
from stages.io.model_files import model_name

log = logging.getLogger(__name__)


def chosen_prompts(config: RunConfig) -> list[str]:
    """The prompts the config asks for, in order: missing sounds most requested first, or the file's."""
    generate = config.generate
    if generate.missing_from is not None:
        return top_missing_sounds(SonifyLayout(generate.missing_from).missing_sounds(), generate.top)
    if generate.prompts is not None:
        return read_prompt_file(generate.prompts)
    raise ConfigError("generate: set generate.missing_from (a sonify.out folder) or generate.prompts (a text file)")


def sound_seconds(config: RunConfig) -> float:
    """The length of each sound: generate.seconds, else one pool clip."""
    return config.generate.seconds or config.pool.clip_seconds


def generation_requests(prompts: list[str], config: RunConfig) -> pa.Table:
    """GENERATION_REQUESTS: one row per prompt, with its seed and file name."""
    generate = config.generate
    model = model_name(generate.model)
    seconds = sound_seconds(config)
    rows: dict[str, list] = {name: [] for name in GENERATION_REQUESTS.names}
    for prompt in prompts:
        seed = prompt_seed(prompt, config.seed)
        made = {"model": model, "prompt": prompt, "seed": seed, "steps": generate.steps, "guidance": generate.guidance}
        made["file"] = sound_file(model, prompt, seed, generate.steps, generate.guidance, seconds)
        for name, values in rows.items():
            values.append(made[name])
    return make_table(GENERATION_REQUESTS, rows)


def run_generate(config: RunConfig) -> dict:
    started = time.monotonic()
    paths = PoolLayout(config.pool.dir)
    store = PoolStore(paths)
    # A pool this run could not extend is refused before any sound is made.
    store.check_compatible(clap_identity(config.models.clap), config.pool)
    requests = generation_requests(chosen_prompts(config), config)
    recorded = set(store.generated_sounds().column("file").to_pylist())
    todo = requests.filter(pa.array([f not in recorded for f in requests.column("file").to_pylist()], pa.bool_()))
    log.info(
        "%d prompts: %d to generate, %d already in the pool",
        requests.num_rows,
        todo.num_rows,
        requests.num_rows - todo.num_rows,
    )

    records = None
    if todo.num_rows:
        storage.remove_temporaries(paths.temporary_folders(config.pool.mix_sample_rates))
        stage = GenerateSounds(paths.root, config.generate, sound_seconds(config))
        blocks = math.ceil(todo.num_rows / config.generate.batch_size)
        made = list(Runner(config.ray).run(todo, [stage], blocks=blocks))
        sounds = pa.concat_tables(made).sort_by([("file", "ascending")])
        # Named by the files it records, so a rerun that makes the same sounds rewrites the same table.
        batch = hashlib.sha256("\n".join(sounds.column("file").to_pylist()).encode()).hexdigest()[:16]
        records = paths.generated_records(batch)
        storage.write_parquet(records, make_table(GENERATED_SOUNDS, sounds))

    pool = run_pool(config)
    return {
        "pool_dir": paths.root,
        "prompts": requests.num_rows,
        "sounds_generated": todo.num_rows,
        "sounds_already_in_pool": requests.num_rows - todo.num_rows,
        "records": records,
        "pool": pool,
        "wall_seconds": round(time.monotonic() - started, 3),
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"generate into {summary['pool_dir']}: {summary['prompts']} prompts, {summary['sounds_generated']} sounds "
        f"generated, {summary['sounds_already_in_pool']} already in the pool, {summary['wall_seconds']:.1f} s",
    ]
    if summary["records"]:
        lines.append(f"  records:  {summary['records']}")
    return "\n".join(lines) + "\n" + pool_summary(summary["pool"])
