"""The pool's FAISS index, brought up to the embeddings on disk after each pool run."""

from __future__ import annotations

import json

from pipelines.pool.store import PoolStore
from schemas import POOL_INDEX_IDS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout
from stages.io import storage
from stages.search import faiss_index


def update_index(paths: PoolLayout, config: RunConfig) -> dict:
    """Bring the index up to the embeddings on disk. index.json, written last, records the parts
    (and their rows) the index covers, so a run killed anywhere after writing parts leaves an index
    that the next run sees is behind. New parts are added in name order; a part that shrank or
    went away, other index settings, or an index file out of step with index.json (a write torn
    by a kill) mean a rebuild, and so does a pool that grew past pool.index.exact_below (kind auto).
    Recall is not measured here: it depends on the queries, and retrieval measures it on its own."""
    store = PoolStore(paths)
    index_config = config.pool.index
    previous = store.index_meta()
    settings = index_config.model_dump(mode="json")
    covered = store.embedded_parts()
    indexed = previous.get("parts") if previous is not None and previous.get("settings") == settings else None
    if indexed == covered:
        return {**previous, "action": "unchanged"}

    index = None
    same_kind = previous is not None and previous.get("kind") == faiss_index.index_kind(
        index_config, sum(covered.values())
    )
    if indexed and same_kind and previous["size"] > 0 and all(covered.get(p) == n for p, n in indexed.items()):
        if store.has_index():
            index = faiss_index.deserialize(storage.read_bytes(paths.index_file()))
            ids = storage.read_parquet(paths.index_ids()).column("clip_id").to_pylist()
            if not index.ntotal == len(ids) == previous["size"]:
                index = None
    if index is not None:
        new_ids, new_vectors = store.embeddings(sorted(set(covered) - set(indexed)))
        if new_vectors is not None:
            faiss_index.add_to_index(index, new_vectors)
            ids.extend(new_ids)
        action = "grown"
    else:
        ids, vectors = store.embeddings()
        index = faiss_index.build_index(vectors, index_config, config.seed) if vectors is not None else None
        action = "built"

    if index is not None:
        storage.write_bytes(paths.index_file(), faiss_index.serialize(index))
    else:
        storage.remove(paths.index_file())
    storage.write_parquet(paths.index_ids(), make_table(POOL_INDEX_IDS, {"row": list(range(len(ids))), "clip_id": ids}))
    meta = {
        "kind": faiss_index.index_kind(index_config, len(ids)),
        "settings": settings,
        "size": len(ids),
        "parts": covered,
    }
    storage.write_text(paths.index_meta(), json.dumps(meta, indent=2) + "\n")
    return {**meta, "action": action}
