"""Entry point: `python run_pipeline.py SUBCOMMAND --config FILE [KEY=VALUE ...]`."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())
