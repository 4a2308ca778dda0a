"""The sonify report's missing sounds: the top of missing_sounds.parquet, each group with
thumbnails of the images it was heard in, read from the images' own sources (an image whose
concepts all went missing is in no shard)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from pipelines.report.files import ReportError
from schemas import MISSING_SOUNDS, schema_version
from schemas.layout import SonifyLayout
from schemas.report_layout import ReportLayout
from stages.images.decoding import read_image_bytes
from stages.images.listing import ImageRef
from stages.io import storage
from stages.report.gallery import thumbnail_jpeg

# Groups of the list shown in the report.
TOP_MISSING_SOUNDS = 20


def top_missing_sounds(
    run: SonifyLayout, top: int, thumbnail_px: int, add: Callable[[str, bytes], str]
) -> list[dict] | None:
    """The first `top` groups of the run's missing sounds, each example image with its `thumbnail`
    (page-relative, added through `add`) or the `problem` that kept it out; None for a run with no
    list (one that has not finished planning)."""
    url = run.missing_sounds()
    if not storage.exists(run.missing_sounds_stats()) or not storage.exists(url):
        return None
    groups = storage.parquet_row_groups(url)
    if not groups:
        return []
    head = storage.read_row_group(url, 0)
    if schema_version(head.schema) != schema_version(MISSING_SOUNDS):
        raise ReportError(
            f"{url} was written under schema {schema_version(head.schema)}; this report reads "
            f"{schema_version(MISSING_SOUNDS)}: report it with the version of the pipeline that wrote it"
        )
    shown = head.slice(0, top).to_pylist()
    refs = [ImageRef(e["image_uri"], e["image_member"], e["image_id"]) for group in shown for e in group["examples"]]
    images = iter(read_image_bytes(refs))
    for rank, group in enumerate(shown, start=1):
        for number, example in enumerate(group["examples"], start=1):
            data = next(images)
            member = example["image_member"]
            example["name"] = example["image_uri"] + (f" ({member})" if member else "")
            example["thumbnail"] = example["problem"] = None
            if not isinstance(data, bytes):
                example["problem"] = f"{example['name']}: {data}"
                continue
            try:
                thumbnail = thumbnail_jpeg(data, thumbnail_px)
                example["thumbnail"] = add(ReportLayout.missing_example(rank, number), thumbnail)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                example["problem"] = f"{example['name']}: image not shown ({exc})"
    return shown
