"""Licences and credits of a sonify run: the images' credits from sonify.image_metadata, written
before planning, and the attribution files of the clips and images the written samples use.

The attribution files are made by DuckDB from the manifest parts, so the memory they take is that of
the distinct credited clips and images DuckDB groups, streamed out in batches, never the dataset's.
"""

from __future__ import annotations

import csv
import io
import re

import pyarrow as pa

from schemas import IMAGE_CREDITS, MANIFEST, make_table
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from stages.io import storage
from stages.licences.metadata import CREDIT_FIELDS, match_images, read_metadata
from stages.licences.spdx import NO_CREDIT_NEEDED, UNKNOWN
from stages.report.sql import connect

# The key column of a sonify.image_metadata file.
IMAGE_KEY = "image"
ATTRIBUTION_COLUMNS = ("kind", "id", "title", "author", "license", "source_url")
FETCH_ROWS = 10_000
# One row per credited clip, then per credited image: every licence but those known to need none.
ATTRIBUTION_SQL = f"""
SELECT 'audio' AS kind, c.clip_id AS id, min(c.title), min(c.attribution), min(c.license), min(c.source_url)
FROM (SELECT unnest(concepts) AS c FROM manifest WHERE error IS NULL)
WHERE c.license IS NOT NULL AND c.license NOT IN ({", ".join("?" * len(NO_CREDIT_NEEDED))})
GROUP BY c.clip_id
UNION ALL
SELECT 'image', image_id, min(image_title), min(image_attribution), min(image_license), min(image_source_url)
FROM manifest
WHERE error IS NULL AND image_license IS NOT NULL AND image_license NOT IN ({", ".join("?" * len(NO_CREDIT_NEEDED))})
GROUP BY image_id
ORDER BY kind, id
"""
LICENSES_SQL = """
SELECT coalesce(c.license, ?), count(DISTINCT c.clip_id)
FROM (SELECT unnest(concepts) AS c FROM manifest WHERE error IS NULL)
GROUP BY 1 ORDER BY 1
"""
IMAGE_LICENSES_SQL = """
SELECT coalesce(image_license, ?), count(DISTINCT image_id) FROM manifest WHERE error IS NULL GROUP BY 1 ORDER BY 1
"""
# The Hugging Face Hub's ids of the SPDX ids it spells otherwise; other CC ids are the SPDX id in
# lower case, and licences it has no id for are `other`.
HUB_LICENSE_IDS = {"ODbL-1.0": "odbl", "PDDL-1.0": "pddl", "ODC-By-1.0": "odc-by"}


def write_image_credits(config: RunConfig, layout: SonifyLayout, listing: pa.Table) -> tuple[int, list[str]]:
    """Writes the IMAGE_CREDITS of the listed images (IMAGE_REFS) that sonify.image_metadata names;
    returns how many it names and the keys that name no image."""
    metadata = read_metadata(config.sonify.image_metadata, IMAGE_KEY)
    matched, unmatched = match_images(
        metadata, listing.column("image_id").to_pylist(), listing.column("uri").to_pylist()
    )
    ids = sorted(matched)
    rows = {"image_id": ids}
    for name in CREDIT_FIELDS:
        if name != "license_raw":
            rows[f"image_{name}"] = [getattr(matched[i], name) for i in ids]
    storage.write_parquet(layout.image_credits(), make_table(IMAGE_CREDITS, rows))
    return len(ids), unmatched


def write_attribution(layout: SonifyLayout) -> dict:
    """Writes ATTRIBUTION.csv and ATTRIBUTION.md from the manifest parts: every clip and image used by a
    written sample whose licence asks for credit (stages.licences.spdx.requires_credit), once each.
    Returns the clips and images credited and the distinct clips used per licence."""
    urls = [u for u in storage.list_files(layout.manifest_folder(), ".parquet") if not layout.is_rejected(u)]
    counts = {"audio": 0, "image": 0}
    exempt = sorted(NO_CREDIT_NEEDED)
    with connect({"manifest": (urls, MANIFEST)}) as con:
        licenses = dict(con.execute(LICENSES_SQL, [UNKNOWN]).fetchall())
        image_licenses = dict(con.execute(IMAGE_LICENSES_SQL, [UNKNOWN]).fetchall())
        cursor = con.execute(ATTRIBUTION_SQL, exempt * 2)
        with (
            storage.open_for_writing(layout.attribution_csv()) as table,
            storage.open_for_writing(layout.attribution_md()) as page,
        ):
            table.write(_csv_lines([ATTRIBUTION_COLUMNS]))
            page.write(MARKDOWN_HEADER.encode())
            heading = None
            while rows := cursor.fetchmany(FETCH_ROWS):
                table.write(_csv_lines(rows))
                lines = []
                for row in rows:
                    if row[0] != heading:
                        heading = row[0]
                        lines.append(f"\n## {'Sounds' if heading == 'audio' else 'Images'}\n\n")
                    lines.append(_markdown_line(*row))
                    counts[row[0]] += 1
                page.write("".join(lines).encode())
            if not counts["audio"] and not counts["image"]:
                page.write(b"\nNo clip or image used needs a credit.\n")
    return {
        "credited_clips": counts["audio"],
        "credited_images": counts["image"],
        "clips_by_license": licenses,
        "images_by_license": image_licenses,
    }


def hub_license(license_id: str) -> str:
    """The dataset card's `license` value for a licence id: `unknown` for none, `other` for a
    `LicenseRef-` or a ported (jurisdiction) licence, else the Hub's id, the SPDX id in lower case."""
    if license_id == UNKNOWN:
        return UNKNOWN
    if license_id in HUB_LICENSE_IDS:
        return HUB_LICENSE_IDS[license_id]
    if license_id.startswith("LicenseRef-") or re.search(r"-\d\.\d-[A-Z]{2}$", license_id):
        return "other"
    return license_id.lower()


def card_licenses(credits: dict) -> list[str]:
    """The dataset card's licences: those of every clip and image the written samples use."""
    used = {*credits["clips_by_license"], *credits["images_by_license"]}
    return sorted({hub_license(license_id) for license_id in used})


def license_notes(credits: dict) -> str:
    """The dataset card's licence section: what the samples use, and where the credits are."""

    def counts(by_license: dict[str, int]) -> str:
        return ", ".join(f"{n} under {license}" for license, n in by_license.items()) or "none"

    return (
        "Each mix is made of pool recordings and carries their terms; the images carry their own. "
        f"Distinct clips used: {counts(credits['clips_by_license'])}. "
        f"Images used: {counts(credits['images_by_license'])}. "
        f"`ATTRIBUTION.md` and `ATTRIBUTION.csv` credit the {credits['credited_clips']} clips and "
        f"{credits['credited_images']} images whose licence asks for it, once each; publish them with the data. "
        "`unknown` counts the clips and images no metadata names: check their terms before publishing."
    )


MARKDOWN_HEADER = (
    "# Attribution\n\n"
    "This dataset uses the recordings and images below under the licences named. Each is listed once; "
    "works under CC0 or in the public domain need no credit and are not listed.\n"
)


def _csv_lines(rows: list[tuple]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _markdown_line(kind: str, id: str, title: str | None, author: str | None, license: str, url: str | None) -> str:
    name = f'"{_escape(title)}"' if title else f"`{id}`"
    by = f" by {_escape(author)}" if author else ""
    link = f", <{url}>" if url else ""
    return f"- {name}{by}, {license}{link} ({'clip' if kind == 'audio' else 'image'} `{id}`)\n"


def _escape(text: str) -> str:
    """Text that Markdown shows as written: its markup characters escaped, on one line."""
    flat = " ".join(text.split())
    return "".join(f"\\{ch}" if ch in "\\`*_[]<>#|" else ch for ch in flat)
