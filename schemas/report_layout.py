"""The layout of a report/ folder (pool.dir/report, sonify.out/report): a contract like the
layouts of schemas/layout.py, by names relative to the folder."""

from __future__ import annotations


class ReportLayout:
    """The files of a report/ folder (pool.dir/report, sonify.out/report), by name relative to it:
    the page links its plots and media by these names, which is what lets the folder be copied or
    served as it is."""

    @staticmethod
    def page() -> str:
        """The page; written last."""
        return "index.html"

    @staticmethod
    def summary() -> str:
        """The page's counts, problems and gallery keys, for scripts and CI."""
        return "report.json"

    @staticmethod
    def plot(name: str) -> str:
        return f"plots/{name}.png"

    @staticmethod
    def thumbnail(number: int) -> str:
        return f"media/{number:04d}.jpg"

    @staticmethod
    def mix(number: int) -> str:
        return f"media/{number:04d}.flac"

    @staticmethod
    def top_clip(number: int) -> str:
        """The audio of the number-th most used clip of a sonify run, at the mix rate."""
        return f"media/clip-{number:04d}.flac"

    @staticmethod
    def missing_example(number: int, position: int) -> str:
        """The position-th example image of the number-th missing sound of a sonify run."""
        return f"media/missing-{number:04d}-{position:04d}.jpg"

    def generated_clip(number: int) -> str:
        """The audio of the number-th most used generated clip of a sonify run, at the mix rate."""
        return f"media/generated-{number:04d}.flac"

    @staticmethod
    def replaced_folders() -> tuple[str, ...]:
        """Folders whose files a new report replaces: what it does not show again is deleted."""
        return ("plots", "media")
