"""benchmarks/hubness.py from files, run as the issue states it (a script, with the repository's
packages on the path), on a tiny planted input: one row per query and chooser, rows and raw cosines
that the pool and queries confirm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "hubness.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_choices_from_files(tmp_path):
    rng = np.random.default_rng(0)
    pool, queries = unit_rows(rng, 60, 8), unit_rows(rng, 25, 8)
    # One hub: close to every query.
    pool[0] = queries.mean(axis=0) / np.linalg.norm(queries.mean(axis=0))
    np.save(tmp_path / "P.npy", pool)
    np.save(tmp_path / "Q.npy", queries)
    done = run_benchmark(
        "--pool-vectors",
        str(tmp_path / "P.npy"),
        "--query-vectors",
        str(tmp_path / "Q.npy"),
        "--out",
        str(tmp_path / "out"),
        "min_cosine=0.75",
    )
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "out" / "choices.parquet").to_pylist()
    assert len(table) == 50
    assert {(r["query"], r["chooser"]) for r in table} == {(q, c) for q in range(25) for c in ("paper", "default")}
    best = (queries @ pool.T).max(axis=1)
    assert 0 < (best < 0.75).sum() < 25, "the input has queries above and below the floor"
    for row in table:
        assert (row["pool_row"] is None) == (best[row["query"]] < 0.75), (
            "dropped exactly when no clip is above the floor"
        )
        if row["pool_row"] is None:
            assert row["cosine"] is None
            continue
        cosine = float(queries[row["query"]] @ pool[row["pool_row"]])
        assert abs(row["cosine"] - cosine) < 1e-5
        assert row["cosine"] >= 0.75, "the floor is on the raw cosine"


def test_bad_input_is_refused_with_the_reason(tmp_path):
    np.save(tmp_path / "P.npy", np.ones((4, 3), np.float64))
    np.save(tmp_path / "Q.npy", np.ones((2, 3), np.float32))
    done = run_benchmark(
        "--pool-vectors",
        str(tmp_path / "P.npy"),
        "--query-vectors",
        str(tmp_path / "Q.npy"),
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode != 0
    assert "--pool-vectors: expected a float32 (rows, d) array" in done.stderr
