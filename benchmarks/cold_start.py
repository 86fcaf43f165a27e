"""Cold start of the Tunesmith window: from `python -m gui` to the first paint of the window.

    python benchmarks/cold_start.py [--runs 5] [--goal 1.5]

Each run is a fresh interpreter (``TUNESMITH_COLD_START=1`` makes the app print the time of
the window's first paint and quit). The wall time is measured here, around the whole process
start, so interpreter start-up and every import count. Settings go to a throw-away folder.
Without $DISPLAY it uses Qt's offscreen platform. Exit status 1 when the median misses the goal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds to the 'visible' line, the app's own in-process figure, CPU seconds).

    The CPU time (user + system, to the process's exit right after the first paint) hardly
    depends on what else the machine is doing; the wall time does.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gui"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    wall = inner = float("nan")
    for line in proc.stdout:
        if line.startswith("visible "):
            wall = time.perf_counter() - start
            inner = float(line.split()[1])
            break
    proc.stdout.read()  # the rest, so the child never writes to a closed pipe
    proc.stdout.close()
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return wall, inner, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--goal", type=float, default=1.5, help="seconds (median)")
    args = parser.parse_args(argv)
    env = dict(os.environ, TUNESMITH_COLD_START="1",
               XDG_CONFIG_HOME=tempfile.mkdtemp(prefix="tunesmith-bench-"))
    if not env.get("DISPLAY"):
        env["QT_QPA_PLATFORM"] = "offscreen"
    one_run(env)  # warm the OS file cache: "cold" means a new process, not a cold disk
    walls, cpus = [], []
    for i in range(args.runs):
        wall, inner, cpu = one_run(env)
        walls.append(wall)
        cpus.append(cpu)
        print(f"run {i + 1}: {wall:.3f} s to the first paint (in-process {inner:.3f} s, "
              f"CPU {cpu:.3f} s)")
    median = statistics.median(walls)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    platform = "offscreen" if env.get("QT_QPA_PLATFORM") == "offscreen" else "X11"
    print(f"median {median:.3f} s, best {min(walls):.3f} s, median CPU "
          f"{statistics.median(cpus):.3f} s over {args.runs} runs ({platform}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.1f}); "
          f"goal ≤ {args.goal} s: {'met' if median <= args.goal else 'MISSED'}")
    return 0 if median <= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
