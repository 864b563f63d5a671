"""How long `fundguard simulate` takes and how much memory it holds, per scale.

Each scale runs in a child process (so its peak memory is its own), and beside it the
baseline measured in the same run: re-writing the very tables it produced with pyarrow
alone, the I/O floor of any simulator that writes these files. Prints one line per scale.

    .venv/bin/python benchmarks/simulate.py [--scales small medium large] [--seed 1]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def peak_rss_children_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def rewrite_seconds(folder: Path, scratch: Path) -> tuple[float, int]:
    """The baseline: read every table and write it again with pyarrow."""
    started = time.perf_counter()
    rows = 0
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        rows += table.num_rows
        pq.write_table(table, scratch / path.name)
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    fundguard = Path(sys.executable).with_name("fundguard")
    print(f"{'scale':<8}{'seconds':>10}{'peak MB':>10}{'rows':>12}{'rewrite s':>11}{'ratio':>8}")
    for scale in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            out, scratch = Path(tmp) / "province", Path(tmp) / "rewrite"
            scratch.mkdir()
            before = peak_rss_children_mb()
            started = time.perf_counter()
            subprocess.run(
                [
                    str(fundguard),
                    "simulate",
                    "--out",
                    str(out),
                    "--seed",
                    str(args.seed),
                    "--scale",
                    scale,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            seconds = time.perf_counter() - started
            peak = peak_rss_children_mb()
            # ru_maxrss of children is the largest child so far: report it only if it grew
            peak_text = f"{peak:10.0f}" if peak > before else f"{'<=' + format(before, '.0f'):>10}"
            baseline, rows = rewrite_seconds(out, scratch)
            print(
                f"{scale:<8}{seconds:10.1f}{peak_text}{rows:12,d}{baseline:11.1f}"
                f"{seconds / baseline:8.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
