"""The bundle's one executable: the app, or the engine child when called like Python.

PyInstaller (packaging/tunesmith.spec) freezes this script as ``tunesmith``. Inside the bundle
``sys.executable`` is that executable, and engine.launch builds every child's command from it
as ``<exe> -m engine VERB ...`` (or ``<exe> -c CODE``), exactly as from a source checkout. So:

    tunesmith [JOB.yaml] [--page P] [--smoke]   the window (gui/__main__.py)
    tunesmith -m engine VERB ...                the engine command line (engine/cli.py)
    tunesmith -c CODE                           run CODE, as ``python -c`` does
"""

from __future__ import annotations

import multiprocessing
import sys


def main(argv: list[str]) -> int:
    if argv[:2] == ["-m", "engine"]:
        from engine.cli import main as engine_main

        sys.argv = [sys.argv[0], *argv[2:]]
        return engine_main(argv[2:])
    if argv[:1] == ["-c"] and len(argv) >= 2:
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        return 0
    if argv[:1] == ["-m"]:
        print(f"error: this bundle runs only `-m engine`, not {' '.join(argv[:2])!r}",
              file=sys.stderr)
        return 2
    from gui.__main__ import main as gui_main

    return gui_main(argv)


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main(sys.argv[1:]))
