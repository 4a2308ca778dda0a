"""Peak memory of a sonify run as the number of images grows, printed as one table.

    .venv/bin/python -m benchmarks.sonify_memory [--quick] [--sizes 1000 5000] [--pool-config FILE]
        [--work DIR] [--json FILE]

Each size is a complete `run_pipeline.py sonify` process over generated images (64x64 JPEG) with
concepts provided from a file, against one small pool built first with the tiny CLAP. While it
runs, the memory of its driver and of every process under it is sampled every 0.1 s. The table
shows the peaks of the driver, of the largest single Ray worker (`ray::` processes: decoding,
concepts, retrieval, mixing and writing) and of the whole process tree (Ray's own services
included). RSS counts the pages of shared libraries (torch, Ray) that a process happens to touch,
which varies by about 10% between identical runs; USS counts only the memory private to the
process, which is where anything held per image would show. Memory that does not grow with the
number of images is the claim under test; tests/test_memory.py runs this command on 1,000 and
5,000 images against a pool of its own (--pool-config) and asserts it on the figures --json writes.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schemas.layout import SonifyLayout

REPO = Path(__file__).resolve().parents[1]

SAMPLE_SECONDS = 0.1
SOUNDS = (
    "dog barking, rain on a roof, car engine idling, birds singing, waves on a beach, wind in trees, "
    "people talking, church bells, a train passing, footsteps on gravel, a crackling fire, a river flowing, "
    "traffic noise, children playing, a door closing, thunder, a cat meowing, a horse galloping, a siren, "
    "keyboard typing"
).split(", ")
IMAGES_PER_CHUNK = 512
AUDIO_FILES = 4


@dataclass
class Peaks:
    driver: int = 0
    worker: int = 0
    tree: int = 0
    driver_uss: int = 0
    worker_uss: int = 0
    samples: int = 0
    worker_titles: set[str] = field(default_factory=set)


class RssSampler(threading.Thread):
    """Samples the RSS of a process and of every process under it until the process ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.peaks = Peaks()

    def run(self) -> None:
        import psutil

        while True:
            try:
                if self.root.status() == psutil.STATUS_ZOMBIE:
                    return
                driver = self.root.memory_full_info()
                children = self.root.children(recursive=True)
            except psutil.Error:
                return
            tree = driver.rss
            for child in children:
                try:
                    title = " ".join(child.cmdline())
                    memory = child.memory_full_info() if title.startswith("ray::") else child.memory_info()
                except psutil.Error:
                    continue
                tree += memory.rss
                if title.startswith("ray::"):
                    self.peaks.worker = max(self.peaks.worker, memory.rss)
                    self.peaks.worker_uss = max(self.peaks.worker_uss, memory.uss)
                    self.peaks.worker_titles.add(title.split(" ")[0])
            self.peaks.driver = max(self.peaks.driver, driver.rss)
            self.peaks.driver_uss = max(self.peaks.driver_uss, driver.uss)
            self.peaks.tree = max(self.peaks.tree, tree)
            self.peaks.samples += 1
            time.sleep(SAMPLE_SECONDS)


def write_pool_inputs(root: Path, models: dict[str, str]) -> Path:
    """A minute of generated audio and a pool config using the tiny transformers CLAP."""
    import numpy as np
    import soundfile
    import yaml

    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    for i in range(AUDIO_FILES):
        rng = np.random.default_rng(i)
        t = np.arange(12 * 16000) / 16000
        signal = 0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        soundfile.write(audio / f"source-{i}.wav", signal.astype(np.float32), 16000)
    config = {
        "seed": 1,
        "ray": {"num_cpus": 2},
        "pool": {"dir": str(root / "pool"), "sources": [str(audio / "*.wav")], "mix_sample_rates": [16000]},
        "models": {"clap": {"backend": "transformers", "model": models["clap_transformers"], "batch_size": 16}},
    }
    path = root / "pool.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_images(root: Path, count: int, concepts_per_image: int | None = None) -> tuple[Path, Path]:
    """`count` small JPEGs and a concepts file naming `concepts_per_image` sounds for each (or one to
    three). Every text is distinct, as a free-form VLM writes them, so retrieval searches as many
    texts as the images hold."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(count)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        color = rng.integers(0, 255, 3)
        pixels = np.clip(color + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{i:06d}.jpg", quality=80)
        sounds = rng.choice(len(SOUNDS), size=concepts_per_image or int(rng.integers(1, 4)), replace=False)
        concepts = [
            {"label": SOUNDS[s].split(" ")[-1], "text": f"{SOUNDS[s]}, heard in scene {i} from place {j}"}
            for j, s in enumerate(sounds)
        ]
        lines.append(json.dumps({"image_id": f"img-{i:06d}", "caption": "a scene", "concepts": concepts}))
    concepts = root / "concepts.jsonl"
    concepts.write_text("\n".join(lines) + "\n")
    return folder, concepts


def sonify_config(pool_config: Path, images: Path, concepts: Path, out: Path) -> Path:
    import yaml

    config = yaml.safe_load(pool_config.read_text())
    config.update(
        {
            "models": {
                **config["models"],
                "vlm": [{"name": "given", "backend": "provided", "path": str(concepts), "batch_size": 256}],
            },
            "sonify": {
                "images": [str(images / "*.jpg")],
                "out": str(out),
                "min_side": 32,
                "shard_size_mb": 16,
                "images_per_chunk": IMAGES_PER_CHUNK,
            },
            "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
        }
    )
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_measured(command: str, config: Path, log: Path) -> tuple[Peaks, float]:
    """One pipeline process, its memory sampled throughout; it must exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_temp = tempfile.mkdtemp(prefix="smb", dir="/tmp")
    env["RAY_TMPDIR"] = ray_temp
    started = time.monotonic()
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "run_pipeline.py"), command, "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = RssSampler(process.pid)
        sampler.start()
        code = process.wait()
        sampler.join()
    seconds = time.monotonic() - started
    subprocess.run(["rm", "-rf", ray_temp], check=False)
    if code != 0:
        raise RuntimeError(f"{command} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    return sampler.peaks, seconds


def measure_sizes(
    root: Path, sizes: list[int], pool_config: Path, concepts_per_image: int | None = None
) -> list[tuple[int, Peaks, float, dict]]:
    """Runs sonify over each number of images against the pool that `pool_config` built."""
    results = []
    for number, size in enumerate(sizes):
        images, concepts = write_images(root / f"inputs-{size}", size, concepts_per_image)
        out = root / f"out-{number}-{size}"
        peaks, seconds = run_measured(
            "sonify", sonify_config(pool_config, images, concepts, out), root / f"sonify-{number}-{size}.log"
        )
        results.append((size, peaks, seconds, json.loads(Path(SonifyLayout(str(out)).summary()).read_text())))
    return results


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--quick", action="store_true", help="sizes 200 and 1000")
    parser.add_argument(
        "--pool-config", type=Path, help="config of a pool already built (default: a pool built here, tiny CLAP)"
    )
    parser.add_argument("--work", type=Path, help="folder for the inputs and runs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write each size's peaks and run summary to this file")
    args = parser.parse_args()
    sizes = [200, 1000] if args.quick else args.sizes

    with tempfile.TemporaryDirectory() as scratch:
        root = args.work or Path(scratch)
        pool_config = args.pool_config
        if pool_config is None:
            from demo.tiny_models import build_transformers_clap

            models = {"clap_transformers": str(build_transformers_clap(root / "models", root / "build"))}
            pool_config = write_pool_inputs(root, models)
            run_measured("pool", pool_config, root / "pool.log")
        results = measure_sizes(root, sizes, pool_config)
    if args.json:
        figures = [
            {
                "images": size,
                "images_per_chunk": IMAGES_PER_CHUNK,
                "seconds": seconds,
                "peaks": asdict(peaks) | {"worker_titles": sorted(peaks.worker_titles)},
                "summary": summary,
            }
            for size, peaks, seconds, summary in results
        ]
        args.json.write_text(json.dumps(figures, indent=2) + "\n")

    print(f"cpus {os.cpu_count()}, images_per_chunk {IMAGES_PER_CHUNK}, RSS sampled every {SAMPLE_SECONDS} s")
    header = [
        "images",
        "samples",
        "shards",
        "seconds",
        "driver RSS",
        "driver USS",
        "worker RSS",
        "worker USS",
        "tree RSS",
    ]
    rows = [
        [
            f"{size:,}",
            f"{s['samples']:,}",
            str(s["shards"]),
            f"{seconds:.0f}",
            mib(p.driver),
            mib(p.driver_uss),
            mib(p.worker),
            mib(p.worker_uss),
            mib(p.tree),
        ]
        for size, p, seconds, s in results
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for number, line in enumerate([header, *rows]):
        print(" | ".join(c.rjust(w) for c, w in zip(line, widths)))
        if number == 0:
            print("-+-".join("-" * w for w in widths))
    first, last = results[0], results[-1]
    print()
    print(f"From {first[0]:,} to {last[0]:,} images ({last[0] / first[0]:.0f}x), same run:")
    for name, attribute in (
        ("driver RSS", "driver"),
        ("driver USS", "driver_uss"),
        ("largest worker RSS", "worker"),
        ("largest worker USS", "worker_uss"),
        ("process tree RSS", "tree"),
    ):
        a, b = getattr(first[1], attribute), getattr(last[1], attribute)
        print(f"  {name}: {mib(a)} -> {mib(b)} MiB ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
