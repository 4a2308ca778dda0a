"""What a pool holds after a run (its totals in summary.json), and the run's summary as text."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from pipelines.pool.store import PoolStore
from schemas.config import RunConfig
from stages.audio.loudness import audible_clip_loudness


def pool_totals(store: PoolStore, config: RunConfig) -> dict:
    table = store.clips(
        [
            "clip_id",
            "source_uri",
            "lufs",
            "loudness_at_rates",
            "silent",
            "error",
            "error_kind",
            "variant",
            "license",
            "generation",
        ]
    )
    ok = table.filter(pc.is_null(table.column("error")))
    indexed = ok.filter(pc.invert(ok.column("silent")))
    silence, max_loss = config.pool.silence_lufs, config.pool.max_band_loss_lu
    kinds = Counter(k for k in table.column("error_kind").to_pylist() if k)
    return {
        "files": len(set(table.column("source_uri").to_pylist())),
        "clips": ok.num_rows,
        "silent_clips": int(pc.sum(ok.column("silent")).as_py() or 0),
        "variant_clips": dict(sorted(Counter(v for v in ok.column("variant").to_pylist() if v).items())),
        # Clips of generated sources (`run_pipeline.py generate`), variants of them included.
        "generated_clips": ok.num_rows - ok.column("generation").null_count,
        "error_rows": table.num_rows - ok.num_rows,
        # Clips (variants included) per licence id, and those whose source no metadata names.
        "clips_by_license": dict(sorted(Counter(v for v in ok.column("license").to_pylist() if v).items())),
        "clips_without_license": ok.column("license").null_count,
        "errors_by_kind": dict(sorted(kinds.items())),
        # Indexed clips that no mix at that rate may use (see loudness.audible_at_rate).
        "inaudible_at_mix_rates": {
            str(rate): indexed.num_rows - len(audible_clip_loudness(indexed, rate, silence, max_loss))
            for rate in sorted(config.pool.mix_sample_rates)
        },
    }


def _kinds(counts: dict[str, int]) -> str:
    return " (" + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ")" if counts else ""


def format_summary(summary: dict) -> str:
    pool, index = summary["pool"], summary["index"]
    requested = index["settings"]["kind"]
    kind = f"{index['kind']} ({requested})" if requested != index["kind"] else index["kind"]
    lines = [
        f"pool {summary['pool_dir']}",
        f"  this run: {summary['files_processed']} files processed ({summary['files_unchanged']} unchanged), "
        f"{summary['clips_added']} clips added ({summary['silent_clips_added']} silent, "
        f"{summary['variant_clips_added']} variants, {summary['generated_clips_added']} generated), "
        f"{summary['errors']} errors"
        f"{_kinds(summary['errors_by_kind'])}, {summary['wall_seconds']:.1f} s",
        f"  pool:     {pool['files']} files, {pool['clips']} clips, {pool['silent_clips']} silent, "
        f"{pool['error_rows']} error rows{_kinds(pool['errors_by_kind'])}, "
        f"variants: {sum(pool['variant_clips'].values())}{_kinds(pool['variant_clips'])}, "
        f"generated: {pool['generated_clips']}, inaudible at mix rates: "
        + ", ".join(f"{n} at {rate} Hz" for rate, n in pool["inaudible_at_mix_rates"].items()),
        f"  index:    {kind}, {index['size']} vectors ({index['action']})",
        f"  licences: {pool['clips_without_license']} clips without one{_kinds(pool['clips_by_license'])}; "
        f"{summary['parts_relabelled']} parts relabelled, {summary['metadata_keys_unmatched']} metadata keys "
        "matched no source",
    ]
    lines += [f"  error:    {reason}" for reason in summary["error_reasons"][:10]]
    if summary["errors"] > 10:
        lines.append(f"  ... {summary['errors'] - 10} more errors in summary.json")
    lines += [f"  warning:  pattern matched no files: {p}" for p in summary["patterns_without_matches"]]
    return "\n".join(lines)
