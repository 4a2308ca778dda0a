"""The sonify report's gallery: each chosen sample's thumbnail and mix, read from its shard."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from schemas.layout import SonifyLayout
from schemas.report_layout import ReportLayout
from stages.io import storage
from stages.report.gallery import read_samples, thumbnail_jpeg
from stages.report.html import GalleryEntry

# A shard is read by walking its tar headers; small read-ahead blocks keep that walk from pulling
# in the data of members it skips on object stores.
SHARD_BLOCK_BYTES = 64 * 1024


def gallery_media(
    paths: SonifyLayout, items: list[dict], thumbnail_px: int, add: Callable[[str, bytes], str]
) -> list[GalleryEntry]:
    """Each chosen sample's thumbnail and mix, read from its shard and added to the page's files
    through `add`; a sample that cannot be read keeps its entry with the reason."""
    entries = []
    for item in items:
        image_name = item["image_uri"] + (f" ({item['image_member']})" if item["image_member"] else "")
        entries.append(
            GalleryEntry(
                item["key"], item["vlm"], item["shard"], image_name, item["caption"], item["mix_lufs"], item["concepts"]
            )
        )
    by_shard: dict[str, list[int]] = {}
    for number, item in enumerate(items):
        by_shard.setdefault(item["shard"], []).append(number)
    for shard, numbers in sorted(by_shard.items()):
        if "/" in shard or shard in ("", ".", ".."):
            for n in numbers:
                entries[n].problems.append(f"manifest row {items[n]['key']}: {shard!r} is not a shard file name")
            continue
        url = paths.shard_named(shard)
        fs, path = storage.filesystem(url)
        try:
            with fs.open(path, "rb", block_size=SHARD_BLOCK_BYTES) as handle:
                found = read_samples(handle, [items[n]["key"] for n in numbers])
        except (OSError, EOFError, ValueError) as exc:
            for n in numbers:
                entries[n].problems.append(f"{url}: cannot read the shard ({type(exc).__name__}: {exc})")
            continue
        for n in numbers:
            members = found.get(items[n]["key"])
            if members is None:
                entries[n].problems.append(f"{url}: holds no sample {items[n]['key']}")
                continue
            if "flac" in members:
                entries[n].audio = add(ReportLayout.mix(n + 1), members["flac"])
            else:
                entries[n].problems.append(f"{url}: sample {items[n]['key']} has no flac member")
            images = [ext for ext in members if ext not in ("flac", "json")]
            try:
                if not images:
                    raise ValueError("no image member")
                entries[n].thumbnail = add(
                    ReportLayout.thumbnail(n + 1), thumbnail_jpeg(members[images[0]], thumbnail_px)
                )
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                entries[n].problems.append(f"{url}: sample {items[n]['key']}: image not shown ({exc})")
    return entries
