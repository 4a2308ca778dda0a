"""Errors of one input (a source file, a row or member of a container, an image, a VLM answer):
raised where the problem is found, with its kind, and turned into an error row where the row is
written. The row stores the text of `error_text` in `error` and the kind in `error_kind`, so
summaries and reports count kinds without reading messages."""

from __future__ import annotations


class BadInput(ValueError):
    """One input that cannot be used. str() is the reason alone; the row's text adds the input's
    name (error_text). A subclass names the kind its instances have unless one is given."""

    kind: str = "failed"

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        if kind is not None:
            self.kind = kind


def error_text(uri: str, reason: str, member: str | None = None, stage: str | None = None) -> str:
    """The text of an error row: "<uri>[#member]: [<stage>: ]<reason>"."""
    name = f"{uri}#{member}" if member else uri
    return f"{name}: {stage}: {reason}" if stage else f"{name}: {reason}"
