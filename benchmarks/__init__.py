"""Benchmarks, one per subject, each run from the repository root as `python -m benchmarks.NAME`
(`--quick` for the smallest sizes) and printing its table:

- pool_throughput: standardizing and CLAP embedding throughput (tiny models);
- search: FAISS index kinds side by side, and concept-text search at pool scale (exact and IVF);
- mixing: mixes per second from stored loudness;
- pool_reads: bytes mixing reads from the pool against the clips it uses;
- sonify_memory: peak memory of sonify runs as the number of images grows;
- report_scale: time of the sonify report as the manifest grows;
- sonify_scale: the scale targets in one table (memory, pool reads, search, end to end);
- hubness: hub clips on planted vectors, the paper's chooser against the hubness correction.

Tests do not import them; tests/test_memory.py and tests/test_pool_reads.py run two of them as
commands and check the figures they write with --json.
"""
