"""Licence and attribution metadata files (pool.metadata, sonify.image_metadata), and matching their
keys to the sources or images they describe.

A metadata file is CSV (with a header row), JSON lines (one object a line) or Parquet, chosen by
its extension, at any fsspec URL. It has a key column and any of the columns `license`,
`attribution`, `source_url` and `title`; other columns are ignored. A file that cannot be read,
lacks the key column or every metadata column, has a blank key, or gives one key two different
rows is refused with an error naming the file and the reason, before any work starts.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from schemas.errors import PipelineError
from stages.io import storage
from stages.licences.spdx import normalize_license

# The metadata columns a file may have; the key column is named by the caller.
METADATA_COLUMNS = ("license", "attribution", "source_url", "title")
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


class MetadataError(PipelineError):
    """A metadata file cannot be used: unreadable, without its key column, or contradicting itself
    or another file."""


@dataclass(frozen=True)
class Credit:
    """Who may use a recording or image and whom to credit for it."""

    license: str | None  # SPDX-style id (stages.licences.spdx.normalize_license)
    license_raw: str | None  # the licence as the metadata gave it
    attribution: str | None  # author or credit line
    source_url: str | None  # where the work is published
    title: str | None

    @classmethod
    def of(cls, license: str | None, attribution: str | None, source_url: str | None, title: str | None) -> Credit:
        """A credit from raw values: blank ones become null, the licence is normalized."""
        license_raw, attribution, source_url, title = (
            _blank_to_none(v) for v in (license, attribution, source_url, title)
        )
        return cls(normalize_license(license_raw), license_raw, attribution, source_url, title)

    def as_row(self) -> dict[str, str | None]:
        return dict(zip(CREDIT_FIELDS, astuple(self)))


CREDIT_FIELDS = ("license", "license_raw", "attribution", "source_url", "title")
NO_CREDIT = Credit(None, None, None, None, None)


@dataclass(frozen=True)
class MetadataRow:
    """A credit, and the file that gave it (for errors that name it)."""

    credit: Credit
    file: str


def _blank_to_none(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_metadata_file(url: str, key_column: str) -> dict[str, Credit]:
    """The credits of one metadata file, by key."""
    table = _read_table(url)
    if key_column not in table.column_names:
        raise MetadataError(
            f"metadata file {url}: no key column {key_column!r} (its columns: {', '.join(table.column_names)})"
        )
    present = [c for c in METADATA_COLUMNS if c in table.column_names]
    if not present:
        raise MetadataError(
            f"metadata file {url}: none of the columns {', '.join(METADATA_COLUMNS)} "
            f"(its columns: {', '.join(table.column_names)})"
        )
    columns = {c: table.column(c).to_pylist() if c in present else [None] * table.num_rows for c in METADATA_COLUMNS}
    credits: dict[str, Credit] = {}
    for row, key in enumerate(table.column(key_column).to_pylist()):
        key = _blank_to_none(key)
        if key is None:
            raise MetadataError(f"metadata file {url}: row {row + 1} has no {key_column!r}")
        credit = Credit.of(*(columns[c][row] for c in METADATA_COLUMNS))
        if credits.setdefault(key, credit) != credit:
            raise MetadataError(
                f"metadata file {url}: key {key!r} is given twice with different values "
                f"({_describe(credits[key])} and {_describe(credit)})"
            )
    return credits


def read_metadata(urls: Iterable[str], key_column: str) -> dict[str, MetadataRow]:
    """The credits of every file, by key. A key that two files give different values is an error
    naming both; the same values twice are one row."""
    found: dict[str, MetadataRow] = {}
    for url in urls:
        for key, credit in read_metadata_file(url, key_column).items():
            earlier = found.setdefault(key, MetadataRow(credit, url))
            if earlier.credit != credit:
                raise MetadataError(
                    f"metadata files {earlier.file} and {url} give key {key!r} different values "
                    f"({_describe(earlier.credit)} and {_describe(credit)})"
                )
    return found


def _describe(credit: Credit) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(CREDIT_FIELDS, astuple(credit)) if k != "license" and v is not None)


def _read_table(url: str) -> pa.Table:
    name = url.lower().rsplit("?", 1)[0]
    try:
        data = storage.read_bytes(url)
    except Exception as exc:  # a missing or unreachable file is the user's input: say which
        raise MetadataError(f"metadata file {url}: cannot read it ({type(exc).__name__}: {exc})") from None
    try:
        if name.endswith(".csv"):
            # Every column as text: a numeric-looking id or a title like "1984" must stay as written.
            options = pacsv.ConvertOptions(column_types=_all_text(data), strings_can_be_null=False)
            return pacsv.read_csv(io.BytesIO(data), convert_options=options)
        if name.endswith(".parquet"):
            return pq.read_table(io.BytesIO(data))
        if name.endswith(JSON_LINES_SUFFIXES):
            return _read_json_lines(data)
    except MetadataError as exc:
        raise MetadataError(f"metadata file {url}: {exc}") from None
    except (pa.ArrowException, UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"metadata file {url}: not readable as {name.rsplit('.', 1)[-1]}: {exc}") from None
    raise MetadataError(f"metadata file {url}: unknown format; use .csv, .jsonl (.ndjson, .json) or .parquet")


def _all_text(data: bytes) -> dict[str, pa.DataType]:
    header = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(block_size=1 << 20)).column_names
    return dict.fromkeys(header, pa.string())


def _read_json_lines(data: bytes) -> pa.Table:
    """JSON lines, each an object; values kept as text. Read by hand so that one row's number and
    another's string in the same column are not a type error."""
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"line {number} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise MetadataError(f"line {number} is not a JSON object")
        rows.append(row)
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.table({name: pa.array([_blank_to_none(row.get(name)) for row in rows], pa.string()) for name in names})


def source_name(uri: str) -> str:
    """The base name a metadata key may give for a source: the file name of a file's URI, the
    member's or row id's own base name for a tar member or Parquet row (`<container>#<key>`)."""
    return uri.rsplit("#", 1)[-1].rsplit("/", 1)[-1] if "#" in uri else uri.rsplit("/", 1)[-1]


def match_sources(metadata: Mapping[str, MetadataRow], uris: Iterable[str]) -> tuple[dict[str, Credit], list[str]]:
    """Which credit each source URI gets, and the metadata keys that match no source.

    A key is matched first against the full source URIs (as the pool table stores them), then
    against their base names (`source_name`). A full match wins over a base-name match for the
    same source. A key whose base name is that of two or more sources it does not fully match is
    an error naming two of them: such sources need full-URI keys.
    """
    uris = sorted(set(uris))
    by_name: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_name[source_name(uri)].append(uri)
    full = set(uris)
    matched: dict[str, Credit] = {}
    unmatched = []
    for key in sorted(metadata):
        if key in full:
            matched[key] = metadata[key].credit
            continue
        named = by_name.get(key, [])
        if len(named) > 1:
            raise MetadataError(
                f"metadata file {metadata[key].file}: key {key!r} is the base name of {len(named)} sources "
                f"({named[0]} and {named[1]}{' and others' if len(named) > 2 else ''}); key them by their full URI"
            )
        if not named:
            unmatched.append(key)
    # Base-name matches after every full one, which they never replace.
    for key in sorted(metadata):
        named = by_name.get(key, [])
        if key not in full and named:
            matched.setdefault(named[0], metadata[key].credit)
    return matched, unmatched


def match_images(
    metadata: Mapping[str, MetadataRow], image_ids: list[str], uris: list[str]
) -> tuple[dict[str, Credit], list[str]]:
    """Which credit each image id gets, and the metadata keys that match no image. A key is matched
    first against the image ids, then against the images' URIs: a URI key credits every image of
    that URI (every image of a WebDataset tar shares the tar's URI), unless an id key names it."""
    ids = set(image_ids)
    by_uri: dict[str, list[str]] = defaultdict(list)
    for image_id, uri in zip(image_ids, uris):
        by_uri[uri].append(image_id)
    matched = {key: row.credit for key, row in metadata.items() if key in ids}
    unmatched = []
    for key in sorted(metadata):
        if key in ids:
            continue
        if key not in by_uri:
            unmatched.append(key)
        for image_id in by_uri.get(key, []):
            matched.setdefault(image_id, metadata[key].credit)
    return matched, unmatched
