"""Model checkpoints at fsspec URLs, copied to a local cache once per node.

transformers' from_pretrained and laion-clap's load_ckpt read local files only. A model path that
is a remote URL (s3://, gs://, memory://, ...) is copied into a cache folder on first use and loaded
from there; Hugging Face ids and local paths are returned as they are.

The cache folder is $SONIFY_MODEL_CACHE, else $XDG_CACHE_HOME/sonify/models, else
~/.cache/sonify/models. Each staged model lives in a folder named by a hash of its URL and of its
files' fingerprints (ETag, or size and mtime), so a checkpoint replaced at the same URL is staged
again rather than served stale. The copy is downloaded into a temporary folder and renamed into
place: workers staging the same model at the same time on one node each download, one rename wins,
and no worker ever loads a half-copied model.

A checkpoint is identified by its content (`checkpoint_digest`): the SHA-256 of its files, so two
checkpoints in folders of the same name are told apart and one checkpoint read from anywhere is
one. Each file's hash is computed once and kept in the cache's `.digests/`, keyed by the file's
path, size and mtime, so a large checkpoint is read again only when it changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from stages.io import sources, storage

CACHE_ENV = "SONIFY_MODEL_CACHE"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sonify" / "models"


def is_remote(model: str) -> bool:
    """A URL of a non-local filesystem. Hugging Face ids (org/name) and paths are not."""
    return "://" in model and not storage.is_local(storage.filesystem(model)[0])


def is_path_or_url(model: str) -> bool:
    """Whether a model setting names a URL or a local path, rather than a Hugging Face id (org/name)."""
    return "://" in model or Path(model).exists()


def model_name(model: str) -> str:
    """The name a pool records for a model: the last component of a path or URL, so the same
    checkpoint read from a local folder or from a bucket gives the same pool identity; a Hugging
    Face id stays whole."""
    if is_path_or_url(model):
        return model.rstrip("/").rsplit("/", 1)[-1]
    return model


def _remote_files(url: str) -> tuple[bool, dict[str, str], dict[str, str]]:
    """(is a folder, relative name -> remote path, relative name -> fingerprint)."""
    fs, path = storage.filesystem(url)
    path = path.rstrip("/")
    info = fs.info(path)
    if info.get("type") == "directory":
        found = fs.find(path, detail=True)
        if not found:
            raise FileNotFoundError(f"model folder {url} holds no files")
        prefix = len(path) + 1
        return True, {p[prefix:]: p for p in found}, {p[prefix:]: sources.fingerprint_of(i) for p, i in found.items()}
    name = path.rsplit("/", 1)[-1]
    return False, {name: path}, {name: sources.fingerprint_of(info)}


def stage_model(url: str, cache: str | Path | None = None) -> str:
    """Local path of a model at `url`: the path itself when it is local or a Hugging Face id, else
    a copy in the cache, made on first use. A file stays a file (its name kept), a folder a folder."""
    if "://" not in url:
        return url
    fs, path = storage.filesystem(url)
    if storage.is_local(fs):
        return path
    is_folder, remote, fingerprints = _remote_files(url)
    digest = hashlib.sha1(json.dumps([url.rstrip("/"), sorted(fingerprints.items())]).encode()).hexdigest()
    root = Path(cache) if cache is not None else cache_root()
    target = root / digest
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:12]}-", dir=root))
        try:
            for relative, remote_path in sorted(remote.items()):
                local = temporary / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote_path, str(local))
            try:
                os.rename(temporary, target)
            except OSError:
                # Another worker renamed its complete copy into place first; that one is used.
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return str(target) if is_folder else str(target / next(iter(remote)))


DIGESTS_FOLDER = ".digests"


def file_digest(path: Path) -> str:
    """SHA-256 of a local file, from the digest cache while its size and mtime are unchanged."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    stamp = {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = cache_root() / DIGESTS_FOLDER / f"{hashlib.sha1(real.encode(errors='surrogateescape')).hexdigest()}.json"
    try:
        cached = json.loads(entry.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return cached["sha256"]
    except (OSError, ValueError):
        pass  # no entry yet, or one a killed writer left unreadable: computed again below
    digest = storage.sha256_of(real)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=entry.parent, prefix=".tmp-", delete=False) as handle:
        json.dump({**stamp, "sha256": digest}, handle)
    os.replace(handle.name, entry)
    return digest


def checkpoint_digest(model: str) -> str:
    """The content of a checkpoint, as one hex digest: a file's SHA-256; for a folder, the SHA-256 of
    its files' names and SHA-256s (weights, config and tokenizer alike decide the embeddings; hidden
    files are left out). A remote checkpoint is staged first, so it is identified by the same bytes as
    a local copy. A Hugging Face id is identified by the revision its cached files were taken from."""
    if not is_path_or_url(model):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        if not isinstance(cached, str):
            raise FileNotFoundError(f"{model} is neither a path nor a Hugging Face model in the local cache")
        # Hub caches keep each revision in snapshots/<commit>/: the commit fixes every file.
        return f"revision:{Path(cached).parent.name}"
    local = Path(stage_model(model))
    if not local.is_dir():
        return file_digest(local)
    files = sorted(
        path
        for path in local.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(local).parts)
    )
    listing = [[path.relative_to(local).as_posix(), file_digest(path)] for path in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
