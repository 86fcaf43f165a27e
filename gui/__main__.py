"""``python -m gui [JOB.yaml]`` / ``tunesmith``: open the window, with the job when one is given."""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import time
from collections.abc import Callable

START = time.perf_counter()
QUIT_WAIT_MS = 2000  # how long quitting waits for a running engine call


# What PySide6 >= 6.5's xcb platform plugin loads that a fresh Debian/Ubuntu lacks:
# (library, Debian/Ubuntu package, Fedora package). Without them Qt aborts the process.
XCB_LIBRARIES = (
    ("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    ("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    ("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    ("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    ("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    ("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    ("libxcb-xinerama.so.0", "libxcb-xinerama0", "libxcb"),
    ("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
)


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def xcb_problem(loads: Callable[[str], bool] | None = None) -> str | None:
    """Why Qt's xcb platform cannot start here (the one install command), or None.

    Checked before Qt is imported: Qt itself aborts the process with no hint of what to install.
    Only on Linux, and only when Qt would pick xcb (QT_QPA_PLATFORM unset or xcb).
    """
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get("QT_QPA_PLATFORM", "xcb").split(":")[0] not in ("", "xcb"):
        return None
    loads = loads or _loads
    missing = [entry for entry in XCB_LIBRARIES if not loads(entry[0])]
    if not missing:
        return None
    libs = ", ".join(lib for lib, _deb, _rpm in missing)
    debian = "sudo apt-get install " + " ".join(deb for _lib, deb, _rpm in missing)
    fedora = "sudo dnf install " + " ".join(dict.fromkeys(rpm for _lib, _deb, rpm in missing))
    if shutil.which("apt-get") or not shutil.which("dnf"):
        how = debian + (f"\n  (Fedora: {fedora})" if not shutil.which("apt-get") else "")
    else:
        how = fedora
    return (f"error: Qt's xcb display platform needs system libraries that are missing: {libs}\n"
            f"  install them with:\n  {how}\n"
            "  (no display at all? run headless with QT_QPA_PLATFORM=offscreen, or use "
            "`python -m engine`)")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Tunesmith: fine-tune a "
                                     "language model on your own machine.")
    parser.add_argument("job", nargs="?", help="a job file (YAML) to open")
    parser.add_argument("--page", default="model", help="the page to show first")
    parser.add_argument("--theme", choices=("system", "light", "dark"), default=None,
                        help="default: the one chosen in View → Theme (system at first)")
    parser.add_argument("--smoke", action="store_true",
                        help="open the window, print 'visible SECONDS' once it is painted, quit "
                        "(tests/test_bundle.py checks a built bundle with it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    problem = xcb_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication

    from gui.window.app import create_app, create_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    ctx = create_app(app, theme=args.theme)
    window = create_window(ctx, job=args.job, page=args.page)
    window.show()
    if args.smoke or os.environ.get("TUNESMITH_COLD_START"):  # benchmarks/cold_start.py
        from gui.window.app import report_when_visible

        report_when_visible(window, START)
    code = app.exec()
    if not ctx.tasks.shutdown(QUIT_WAIT_MS):
        # An engine call (say, importing torch) is still running and its answer is not wanted:
        # don't make the user wait for it. Settings were synced when the window closed.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
