"""Peak memory of a pool worker on a long source: a 5-minute and a 2-hour 48 kHz stereo recording.

    python -m benchmarks.pool_memory [--quick] [--minutes 5 120] [--work DIR]

Each recording (16-bit WAV of noise and a slow tone, generated here and deleted after) is the only
source of a `run_pipeline.py pool` process with the tiny CLAP, in a pool of its own. While the run
goes on, every process under it is read from /proc twice a second: VmHWM, the kernel's own record
of a process's peak RSS, so no peak falls between two samples. The table shows the peak of the
largest Ray worker of each stage (standardize; embed_audio, the CLAP actor) and of the driver. The
claim under test: a worker's peak on the 2-hour file stays within 300 MiB of its peak on the
5-minute one (whole-file decoding held the file, its samples and the part's FLAC: gigabytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

RATE = 48000
STAGES = ("standardize", "embed_audio")
GROWTH_TARGET_MIB = 300


def write_recording(path: Path, minutes: float) -> None:
    """Stereo noise at -26 dBFS with a 220 Hz tone, written a minute at a time."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for minute in range(int(np.ceil(minutes))):
            frames = int(min(60.0, minutes * 60 - minute * 60) * RATE)
            t = (np.arange(frames) + minute * 60 * RATE) / RATE
            tone = 0.1 * np.sin(2 * np.pi * 220.0 * t)
            left, right = tone + 0.05 * rng.standard_normal(frames), tone + 0.05 * rng.standard_normal(frames)
            samples = np.clip(np.round(np.stack([left, right], axis=1) * 32767), -32768, 32767).astype("<i2")
            out.writeframes(samples.tobytes())


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def peak_rss_and_title(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            title = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    if "VmHWM" not in fields:
        return None
    return int(fields["VmHWM"].split()[0]) * 1024, title


class PeakWatcher(threading.Thread):
    """Peak RSS (VmHWM) of every process under `root`, with every title each showed."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.titles: dict[int, set[str]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for pid in descendants(self.root):
                seen = peak_rss_and_title(pid)
                if seen is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), seen[0])
                    self.titles.setdefault(pid, set()).add(seen[1])

    def largest(self, stage: str) -> int:
        """Peak of the largest Ray worker that ran `stage`."""
        return max((p for pid, p in self.peaks.items() if any(stage in t for t in self.titles[pid])), default=0)


def measure(work: Path, minutes: float, clap_model: str) -> dict:
    folder = work / f"{minutes:g}-minutes"
    (folder / "sources").mkdir(parents=True)
    recording = folder / "sources" / "recording.wav"
    write_recording(recording, minutes)
    config = folder / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "pool": {"dir": str(folder / "pool"), "sources": [str(recording)]},
                "models": {"clap": {"backend": "transformers", "model": clap_model, "batch_size": 8}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    with open(folder / "pool.log", "wb") as log:
        run = subprocess.Popen(
            [sys.executable, "run_pipeline.py", "pool", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        watcher = PeakWatcher(run.pid)
        watcher.start()
        code = run.wait()
        watcher.stopping.set()
        watcher.join()
    if code != 0:
        raise SystemExit(f"pool run over {recording} exited {code}; see {folder / 'pool.log'}")
    summary = json.loads((folder / "pool" / "summary.json").read_text())
    recording.unlink()
    return {
        "minutes": minutes,
        "source_mib": (minutes * 60 * RATE * 4) / 2**20,
        "clips": summary["clips_added"],
        "seconds": time.monotonic() - started,
        "driver": watcher.peaks.get(run.pid, 0),
        **{stage: watcher.largest(f"({stage})") for stage in STAGES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, nargs=2, default=[5.0, 120.0], help="short and long recording")
    parser.add_argument("--quick", action="store_true", help="30 seconds and 3 minutes, to check that it runs")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    minutes = [0.5, 3.0] if args.quick else args.minutes
    from demo.tiny_models import build_all

    with tempfile.TemporaryDirectory(prefix="pool-memory-") as scratch:
        work = args.work or Path(scratch)
        models = build_all(work / "models")
        short, long = (measure(work, minutes, models["clap_transformers"]) for minutes in minutes)

    def mib(value: float) -> str:
        return f"{value / 2**20:,.0f} MiB"

    print(
        f"| peak RSS | {short['minutes']:g} min ({short['clips']} clips) | {long['minutes']:g} min "
        f"({long['clips']} clips) | growth |"
    )
    print("|---|---|---|---|")
    for name in (*STAGES, "driver"):
        print(f"| {name} | {mib(short[name])} | {mib(long[name])} | {mib(long[name] - short[name])} |")
    print(
        f"source: {short['source_mib']:,.0f} MiB and {long['source_mib']:,.0f} MiB of 48 kHz stereo 16-bit WAV; "
        f"runs took {short['seconds']:.0f} s and {long['seconds']:.0f} s"
    )
    worst = max(long[s] - short[s] for s in STAGES) / 2**20
    verdict = "within" if worst <= GROWTH_TARGET_MIB else "OVER"
    print(f"largest worker growth: {worst:,.0f} MiB, {verdict} the {GROWTH_TARGET_MIB} MiB target")


if __name__ == "__main__":
    main()
