"""Rerun every CPU benchmark: ``python benchmarks/run_all.py [--steps 10] [--repeats 3]``.

Training speed (Tunesmith vs the plain script, benchmarks/train_speed.py) and the window's cold
start (benchmarks/cold_start.py), each in a fresh interpreter; the training figures go to
``benchmarks/results/train_speed.json``. The GPU check (benchmarks/gpu_check.py) needs a CUDA
machine and runs on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    (HERE / "results").mkdir(exist_ok=True)
    jobs = [[sys.executable, str(HERE / "train_speed.py"), "--steps", str(args.steps),
             "--repeats", str(args.repeats), "--json", str(HERE / "results" / "train_speed.json")],
            [sys.executable, str(HERE / "cold_start.py"), "--runs", str(max(args.repeats, 3))]]
    worst = 0
    for argv_ in jobs:
        print("$", " ".join(argv_[1:]), flush=True)
        worst = max(worst, subprocess.call(argv_, cwd=HERE.parent))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
