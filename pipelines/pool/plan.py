"""Planning a pool run: which listed sources to (re)process, in which parts, and which stored rows
they make stale. Plain functions of the listing and the stored rows."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from schemas import POOL_PARTS, make_table
from stages.io.sources import SourceFile

# The pool table's columns that planning reads.
PLAN_COLUMNS = ["source_uri", "source_fingerprint", "error", "part"]


@dataclass
class PoolPlan:
    to_process: list[SourceFile]
    unchanged: int
    # old part -> source URIs whose rows in that part are stale
    stale: dict[str, set[str]] = field(default_factory=dict)


def plan_work(sources: list[SourceFile], existing: pa.Table, retry_errors: bool) -> PoolPlan:
    """Decide what a run does. `existing` has one row per stored clip (source_uri,
    source_fingerprint, error, part). A listed source is processed when it is new, when its
    fingerprint changed, or (with retry_errors) when its last attempt failed. Every stored row of a
    listed source whose fingerprint is not the current one, or that is being processed again, is stale."""
    stored: dict[str, list[tuple[str | None, str | None, str]]] = defaultdict(list)
    for uri, fingerprint, error, part in zip(
        existing.column("source_uri").to_pylist(),
        existing.column("source_fingerprint").to_pylist(),
        existing.column("error").to_pylist(),
        existing.column("part").to_pylist(),
    ):
        stored[uri].append((fingerprint, error, part))
    to_process, unchanged = [], 0
    stale: dict[str, set[str]] = defaultdict(set)
    # Rows stored under a container's own URL (its listing failed once) are stale once it lists rows.
    listed = {source.uri for source in sources}
    for container in {s.member.container for s in sources if s.member is not None} - listed:
        for _, _, part in stored.get(container, []):
            stale[part].add(container)
    for source in sources:
        rows = stored.get(source.uri, [])
        current = [r for r in rows if r[0] == source.fingerprint]
        failed = bool(current) and all(r[1] is not None for r in current)
        redo = not current or (retry_errors and failed)
        if redo:
            to_process.append(source)
        else:
            unchanged += 1
        for fingerprint, _, part in rows:
            if redo or fingerprint != source.fingerprint:
                stale[part].add(source.uri)
    return PoolPlan(to_process, unchanged, dict(stale))


def group_parts(sources: list[SourceFile], files_per_part: int) -> pa.Table:
    """Deterministic parts: sorted sources in groups, each named by a hash of its members. A
    container's rows or members stay in stored order, so a part reads neighbouring bytes."""
    ordered = sorted(sources, key=lambda s: s.order)
    names, uris, fingerprints, errors, error_kinds, members, generations = [], [], [], [], [], [], []
    for start in range(0, len(ordered), files_per_part):
        group = ordered[start : start + files_per_part]
        digest = hashlib.sha1("\n".join(f"{s.uri}\t{s.fingerprint}" for s in group).encode()).hexdigest()
        names.append(f"part-{digest[:16]}")
        uris.append([s.uri for s in group])
        fingerprints.append([s.fingerprint for s in group])
        errors.append([s.error for s in group])
        error_kinds.append([s.error_kind for s in group])
        members.append([asdict(s.member) if s.member is not None else None for s in group])
        generations.append([s.generation for s in group])
    return make_table(
        POOL_PARTS,
        {
            "part": names,
            "uris": uris,
            "fingerprints": fingerprints,
            "errors": errors,
            "error_kinds": error_kinds,
            "members": members,
            "generations": generations,
        },
    )
