"""``python -m gui [JOB.yaml]`` / ``tunesmith``: open the window, with the job when one is given."""

from __future__ import annotations

import argparse
import os
import sys
import time

START = time.perf_counter()
QUIT_WAIT_MS = 2000  # how long quitting waits for a running engine call


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Tunesmith: fine-tune a "
                                     "language model on your own machine.")
    parser.add_argument("job", nargs="?", help="a job file (YAML) to open")
    parser.add_argument("--page", default="model", help="the page to show first")
    parser.add_argument("--theme", choices=("system", "light", "dark"), default=None,
                        help="default: the one chosen in View → Theme (system at first)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from PySide6.QtWidgets import QApplication

    from gui.app import create_app, create_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    ctx = create_app(app, theme=args.theme)
    window = create_window(ctx, job=args.job, page=args.page)
    window.show()
    if os.environ.get("TUNESMITH_COLD_START"):  # benchmarks/cold_start.py
        from gui.app import report_when_visible

        report_when_visible(window, START)
    code = app.exec()
    if not ctx.tasks.shutdown(QUIT_WAIT_MS):
        # An engine call (say, importing torch) is still running and its answer is not wanted:
        # don't make the user wait for it. Settings were synced when the window closed.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
