"""Command line: `python run_pipeline.py SUBCOMMAND --config FILE [KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines.config import load_config
from pipelines.config_reference import PAGE_PATH, configuration_page
from schemas.errors import PipelineError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py", description="Sonify image datasets: build audio pools and pairs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("pool", "build or extend an audio pool: clips, loudness, CLAP embeddings, index"),
        ("sonify", "pair images with mixes of pool clips: VLM concepts, retrieval, mixing, shards"),
        ("render", "rebuild shards from a manifest and the pool, with no model"),
        ("generate", "make sounds from text (AudioLDM, AudioLDM 2) and add them to the pool"),
        ("train-mapper", "train the CLIP -> CLAP mapper on image-audio pairs (mapper.pairs); docs/mapper.md"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--config", required=True, help="YAML config file")
        command.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, values parsed as YAML"
        )
    report = sub.add_parser(
        "report", help="write an HTML report of sonify.out and of pool.dir, in their report/ folders"
    )
    report.add_argument("--config", required=True, help="YAML config file")
    report.add_argument(
        "--of",
        choices=("all", "sonify", "pool"),
        default="all",
        help="what to report: sonify (sonify.out/report), pool (pool.dir/report), "
        "or all: each of them that holds a finished run (default)",
    )
    report.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, values parsed as YAML")
    tiny = sub.add_parser("tiny-models", help="write tiny random models of the real architectures (offline)")
    tiny.add_argument("--out", required=True, help="folder to write them to")
    sample = sub.add_parser("sample-data", help="generate the demo's audio sample")
    sample.add_argument("--out", required=True, help="folder to write it to")
    sub.add_parser("config-reference", help=f"print the configuration reference page ({PAGE_PATH}): every config key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "tiny-models":
        from demo.tiny_models import build_all

        print(json.dumps(build_all(args.out), indent=2))
        return 0
    if args.command == "config-reference":
        sys.stdout.write(configuration_page())
        return 0
    if args.command == "sample-data":
        from demo.sample_data import write_sample

        written = write_sample(args.out)
        print(f"wrote {len(written)} files to {args.out}")
        return 0
    try:
        config = load_config(args.config, args.overrides, command=args.command)
        if args.command == "report":
            from pipelines.report import run_report

            for url in run_report(config, args.of):
                print(f"report: {url}")
            return 0
        if args.command == "generate":
            from pipelines.generate import format_summary, run_generate

            print(format_summary(run_generate(config)))
            return 0
        if args.command == "train-mapper":
            from pipelines.mapper import format_summary, train_mapper

            print(format_summary(train_mapper(config)))
            return 0
        from pipelines import pool, sonify

        if args.command == "pool":
            print(pool.format_summary(pool.run_pool(config)))
        elif args.command == "sonify":
            print(sonify.format_summary(sonify.run_sonify(config)))
        else:
            print(json.dumps(sonify.run_render(config), indent=2))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
