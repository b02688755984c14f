"""Start-up and one-image latency of the command line, end to end in fresh processes.

Times, as a user's shell would run them (median of ``--repeats`` runs each):
``anomaly --help``, ``anomaly score --help``, a usage error, and ``anomaly score --model
RUN --image X`` (start Python, import, load the checkpoint, read and score one file).

Usage:
    PYTHONPATH=. python bench/bench_start.py --model RUN --image FILE [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, markdown_table  # noqa: E402


def timed(command: list[str], repeats: int) -> tuple[float, int]:
    """Median wall seconds of a command over ``repeats`` runs, and its last exit code."""
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run(command, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "cli.anomaly_cli"]
    cases = {
        "anomaly --help": [*cli, "--help"],
        "anomaly score --help": [*cli, "score", "--help"],
        "a usage error (score without --image/--dir)": [*cli, "score", "--model", args.model],
        "score one image (default mode)": [*cli, "score", "--model", args.model, "--image",
                                           args.image, "--no-progress", "--device", "cpu"],
    }
    print(f"# Start-up benchmark\n\nCPU: {cpu_model()}; Python {sys.version.split()[0]}; "
          f"medians of {args.repeats} runs, each a fresh process.\n")
    rows, figures = [], {}
    for name, command in cases.items():
        seconds, code = timed(command, args.repeats)
        rows.append([name, seconds, code])
        figures[name] = {"seconds": seconds, "exit_code": code}
    print(markdown_table(["command", "seconds", "exit code"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
