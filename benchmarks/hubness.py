"""Hub clips: the paper's chooser (SSR + dynamic threshold on raw cosines, retrieval.hubness: none)
against the default (the hubness correction, then SSR + threshold), on planted data with hubs and on
a control without them.

    .venv/bin/python benchmarks/hubness.py [--quick] [--seeds N] [GENERATOR=VALUE ...] [KEY=VALUE ...]
    .venv/bin/python benchmarks/hubness.py --pool-vectors P.npy --query-vectors Q.npy --out DIR [KEY=VALUE ...]
    .venv/bin/python benchmarks/hubness.py --bias-cost 50000x10000

KEY=VALUE overrides the run config (configs/demo.yaml), as on the pipeline's command line; a bare key
is a retrieval setting (`hubness_alpha=0.5` is `retrieval.hubness_alpha=0.5`). GENERATOR=VALUE
(`clusters=`, `hubs=`, `hub_strength=`, `gap=`, `popularity=`, ...) changes the planted data.

From files: P is float32 (n_clips, d), Q float32 (n_queries, d), both L2-normalized; query row i
is the one concept text of a sample of its own. DIR/choices.parquet gets one row per query and
chooser: query, chooser ("paper" or "default"), pool_row (null when dropped), cosine (raw).

Both choosers run the pipeline's own functions: the bank is `bank_rows` of the queries (the run's
concept texts), the biases `pool_biases` over the pool's index, the search `corrected_search`, the
choice `choose_clips` seeded per sample, exactly as the retrieval and planning stages call them.

Planted data. CLUSTERS sound sources: a centre on the unit sphere each, CLIPS_PER_CLUSTER clips
around it (noise of length SPREAD). A text query of a cluster is its centre plus GAP times one gap
direction G shared by every text (the modality gap) plus noise. Queries pick their cluster with
Zipf popularity POPULARITY (0: uniform). HUBS clips are busy recordings: the mean of HUB_SOURCES
centres, pulled HUB_STRENGTH towards G, so that they lie close to the text side as a whole. The
control replaces the hubs with ordinary clips. Targets: on hubs, the default gives >= 1.5x the
paper's distinct clips, <= half its hub share, and mean raw cosine within 0.01; on the control,
>= 0.98x the distinct clips and mean raw cosine within 0.005.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import load_config
from schemas.config import RunConfig
from stages.search import faiss_index, hubness
from stages.search.choice import ConceptChoice, choose_clips

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
TOP_USED = 20


@dataclass(frozen=True)
class Planted:
    clusters: int = 400
    clips_per_cluster: int = 50
    hubs: int = 100
    queries: int = 20_000
    dim: int = 128
    spread: float = 0.9
    gap: float = 1.2
    query_noise: float = 0.9
    hub_sources: int = 8
    hub_strength: float = 0.5
    hub_noise: float = 0.1
    popularity: float = 0.0
    seed: int = 0


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def noise(rng: np.random.Generator, n: int, dim: int, length: float) -> np.ndarray:
    return rng.standard_normal((n, dim)) * (length / np.sqrt(dim))


def planted(p: Planted, with_hubs: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool, queries, hub mask of the pool): the same clusters, queries and gap with or without hubs."""
    rng = np.random.default_rng(p.seed)
    centres = unit(rng.standard_normal((p.clusters, p.dim)))
    gap = unit(rng.standard_normal((1, p.dim)))[0]
    members = np.repeat(np.arange(p.clusters), p.clips_per_cluster)
    clips = unit(centres[members] + noise(rng, members.size, p.dim, p.spread))
    popularity = 1.0 / np.arange(1, p.clusters + 1) ** p.popularity
    asked = rng.choice(p.clusters, size=p.queries, p=popularity / popularity.sum())
    queries = unit(centres[asked] + p.gap * gap + noise(rng, p.queries, p.dim, p.query_noise))
    sources = np.stack([rng.choice(p.clusters, p.hub_sources, replace=False) for _ in range(p.hubs)])
    busy = unit(centres[sources].mean(axis=1))
    hubs = unit(busy + p.hub_strength * gap + noise(rng, p.hubs, p.dim, p.hub_noise))
    ordinary = rng.integers(0, p.clusters, p.hubs)
    extra = hubs if with_hubs else unit(centres[ordinary] + noise(rng, p.hubs, p.dim, p.spread))
    pool = np.concatenate([clips, extra])
    return pool, queries, np.arange(len(pool)) >= len(clips) if with_hubs else np.zeros(len(pool), bool)


def choose_all(config: RunConfig, pool: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(pool row or -1, raw cosine or NaN) of each query, one sample per query, with the run's
    settings; and the widest raw search the corrected search needed (K' of corrected_search)."""
    r = config.retrieval
    index = faiss_index.build_index(pool, config.pool.index, config.seed)
    if r.hubness == "none":
        scores, rows = faiss_index.search_at(index, queries, r.search_k, None)
        corrected, widest = None, r.search_k
    else:
        bank = queries[hubness.bank_rows(len(queries), r.hubness_bank)]
        neighbours = hubness.BankNeighbours.empty(len(bank), r.hubness_k)
        bias_rows, biases = hubness.pool_biases(index, bank, r.hubness_k, neighbours)
        by_row = np.empty(len(pool))
        by_row[bias_rows] = biases
        penalties = hubness.Correction.of_pool(by_row, r.hubness_alpha, r.hubness_outlier_z).penalties(by_row)
        scores, corrected, rows, widest = hubness.corrected_search(
            hubness.index_searcher(index, None), index.ntotal, queries, r.search_k, penalties
        )
    picked = np.full(len(queries), -1, np.int64)
    cosine = np.full(len(queries), np.nan)
    # Clip ids are strings in the pipeline (a variant's id names its parent's); here, pool rows as text.
    usable = {str(row) for row in range(len(pool))}
    for i in range(len(queries)):
        found = rows[i] >= 0
        text = str(i)
        matches = {text: ([str(x) for x in rows[i][found]], scores[i][found].astype(np.float64))}
        ranked = None if corrected is None else {text: corrected[i][found].astype(np.float64)}
        (choice,) = choose_clips(
            [text], matches, config.seed, f"query-{i}", r.k, r.ssr, r.min_cosine, usable, corrected=ranked
        )
        if isinstance(choice, ConceptChoice):
            picked[i], cosine[i] = int(choice.clip_id), choice.cosine
    return picked, cosine, widest


def exposure(picked: np.ndarray, cosine: np.ndarray, widest: int, hubs: np.ndarray) -> dict:
    chosen = picked[picked >= 0]
    counts = np.bincount(chosen, minlength=hubs.size)
    return {
        "distinct": int(np.count_nonzero(counts)),
        "hub_share": float(hubs[chosen].mean()) if chosen.size else 0.0,
        "top20_share": float(np.sort(counts)[-TOP_USED:].sum() / max(chosen.size, 1)),
        "mean_cosine": float(np.nanmean(cosine)) if chosen.size else float("nan"),
        "widest_search": widest,
    }


def targets(paper: dict, default: dict, with_hubs: bool) -> dict[str, bool]:
    if with_hubs:
        return {
            "distinct >= 1.5x": default["distinct"] >= 1.5 * paper["distinct"],
            "hub share <= 0.5x": default["hub_share"] <= 0.5 * paper["hub_share"],
            "cosine within 0.01": abs(default["mean_cosine"] - paper["mean_cosine"]) <= 0.01,
        }
    return {
        "distinct >= 0.98x": default["distinct"] >= 0.98 * paper["distinct"],
        "cosine within 0.005": abs(default["mean_cosine"] - paper["mean_cosine"]) <= 0.005,
    }


def compare(config: RunConfig, p: Planted) -> list[dict]:
    paper = config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"hubness": "none"})})
    rows = []
    for with_hubs in (True, False):
        pool, queries, hubs = planted(p, with_hubs)
        started = time.perf_counter()
        results = {
            name: exposure(*choose_all(c, pool, queries), hubs) for name, c in (("paper", paper), ("default", config))
        }
        met = targets(results["paper"], results["default"], with_hubs)
        top1 = faiss_index.search_at(faiss_index.build_index(pool, config.pool.index), queries, 1, None)[1][:, 0]
        rows.append(
            {
                "data": "hubs" if with_hubs else "control",
                "top1_hub_share": float(hubs[top1].mean()),
                **{f"{name}_{k}": v for name, r in results.items() for k, v in r.items()},
                "targets": met,
                "seconds": time.perf_counter() - started,
            }
        )
    return rows


def print_table(p: Planted, rows: list[dict]) -> None:
    print(f"planted: {p}")
    print(f"| data | chooser | distinct clips | hub share | top-{TOP_USED} share | mean raw cosine | targets |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for name in ("paper", "default"):
            met = (
                ", ".join(f"{what}: {'met' if ok else 'MISSED'}" for what, ok in row["targets"].items())
                if name == "default"
                else f"top-1 hub share {row['top1_hub_share']:.2f}"
            )
            met += f"; widest raw search {row[f'{name}_widest_search']}"
            print(
                f"| {row['data']} | {name} | {row[f'{name}_distinct']:,} | {row[f'{name}_hub_share']:.3f} | "
                f"{row[f'{name}_top20_share']:.3f} | {row[f'{name}_mean_cosine']:.4f} | {met} |"
            )


def run_files(config: RunConfig, pool_path: str, query_path: str, out: str) -> None:
    pool, queries = np.load(pool_path), np.load(query_path)
    for name, array in (("--pool-vectors", pool), ("--query-vectors", queries)):
        if array.ndim != 2 or array.dtype != np.float32:
            sys.exit(f"{name}: expected a float32 (rows, d) array, got {array.dtype} {array.shape}")
        if not np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3):
            sys.exit(f"{name}: rows must be L2-normalized")
    if pool.shape[1] != queries.shape[1]:
        sys.exit(f"--pool-vectors has d={pool.shape[1]}, --query-vectors d={queries.shape[1]}: they must match")
    paper = config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"hubness": "none"})})
    columns: dict[str, list] = {"query": [], "chooser": [], "pool_row": [], "cosine": []}
    for name, c in (("paper", paper), ("default", config)):
        picked, cosine, _ = choose_all(c, pool, queries)
        columns["query"] += range(len(queries))
        columns["chooser"] += [name] * len(queries)
        columns["pool_row"] += [int(r) if r >= 0 else None for r in picked]
        columns["cosine"] += [None if np.isnan(x) else float(x) for x in cosine]
    Path(out).mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("query", pa.int64()), ("chooser", pa.string()), ("pool_row", pa.int64()), ("cosine", pa.float64())]
    )
    pq.write_table(pa.table(columns, schema=schema), Path(out) / "choices.parquet")
    print(f"{len(columns['query'])} choices written to {Path(out) / 'choices.parquet'}")


def bias_cost(clips: int, bank_texts: int, dim: int) -> None:
    """Seconds of the bias pass (`pool_biases`, what the bank stage runs) over a flat index of
    `clips` random vectors against `bank_texts`, and that rate carried to 500K clips x 100K texts:
    the pass is one product of pool and bank, so its cost grows with their product."""
    rng = np.random.default_rng(0)
    pool = unit(rng.standard_normal((clips, dim)))
    bank = unit(rng.standard_normal((bank_texts, dim)))
    index = faiss_index.build_index(pool, load_config(DEMO_CONFIG).pool.index)
    started = time.perf_counter()
    hubness.pool_biases(index, bank, 10, hubness.BankNeighbours.empty(bank_texts, 10))
    seconds = time.perf_counter() - started
    pairs = clips * bank_texts
    full = seconds * (500_000 * 100_000) / pairs
    print(
        f"bias pass: {clips:,} clips x {bank_texts:,} bank texts (d={dim}) in {seconds:.1f} s, "
        f"{pairs / seconds / 1e9:.2f} G pairs/s; 500K x 100K at that rate: {full / 60:.0f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-vectors")
    parser.add_argument("--query-vectors")
    parser.add_argument("--out")
    parser.add_argument("--quick", action="store_true", help="a tenth of the planted data")
    parser.add_argument("--seeds", type=int, default=1, help="planted data sets, seeds 0..N-1")
    parser.add_argument(
        "--bias-cost", metavar="CLIPSxBANK", help="time the bias pass at this size instead, e.g. 50000x10000"
    )
    parser.add_argument("settings", nargs="*", help="KEY=VALUE (run config) or GENERATOR=VALUE (planted data)")
    args = parser.parse_args()
    generator = {f.name: f.type for f in fields(Planted)}
    planted_settings, overrides = {}, []
    for setting in args.settings:
        key, _, value = setting.partition("=")
        if key in generator:
            planted_settings[key] = (float if generator[key] == "float" else int)(value)
        else:
            overrides.append(setting if "." in key else f"retrieval.{setting}")
    config = load_config(DEMO_CONFIG, overrides)
    if args.bias_cost:
        clips, bank_texts = (int(n) for n in args.bias_cost.lower().split("x"))
        bias_cost(clips, bank_texts, 512)
        return
    if args.pool_vectors or args.query_vectors or args.out:
        if not (args.pool_vectors and args.query_vectors and args.out):
            sys.exit("--pool-vectors, --query-vectors and --out go together")
        run_files(config, args.pool_vectors, args.query_vectors, args.out)
        return
    p = Planted(**planted_settings)
    if args.quick:
        p = replace(p, clusters=max(10, p.clusters // 10), hubs=max(1, p.hubs // 10), queries=p.queries // 10)
    print(f"retrieval: {config.retrieval.model_dump()}")
    for seed in range(args.seeds):
        print_table(replace(p, seed=p.seed + seed), compare(config, replace(p, seed=p.seed + seed)))


if __name__ == "__main__":
    main()
