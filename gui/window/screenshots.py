"""Regenerate docs/screenshots/*.png: every page at 1280×800, light theme (and dark Method).

    python -m gui.window.screenshots [--out docs/screenshots]

Needs a display: run it under Xvfb (``xvfb-run -s "-screen 0 1600x1000x24" python -m
gui.window.screenshots``); without $DISPLAY it re-runs itself that way when xvfb-run is installed.
Uses the offline default model and the demo dataset, and waits for every engine call to finish.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZE = (1280, 800)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gui.window.screenshots")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--pages", nargs="*", help="only these page keys")
    parser.add_argument("--comparison", default=str(ROOT / "docs" / "compare-default"),
                        metavar="DIR",
                        help="a comparison folder (python -m engine compare) for the "
                             "Compare methods page")
    parser.add_argument("--run", default=None, metavar="DIR",
                        help="a finished run folder (python -m engine train ...): the Train "
                             "page re-attaches to it and Evaluate, Export and Runs show it, so "
                             "the screenshots show a real run rather than empty pages")
    return parser.parse_args(argv)


def _under_xvfb(argv: list[str]) -> int:
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        print("no $DISPLAY and no xvfb-run: install xvfb or run on a desktop", file=sys.stderr)
        return 2
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m",
           "gui.window.screenshots", *argv]
    return subprocess.call(cmd, cwd=ROOT)


def _settle(app, ctx, quiet_s: float = 1.5, timeout_s: float = 240) -> None:  # type: ignore[no-untyped-def]
    """Process events until no engine call has run for ``quiet_s`` seconds."""
    end = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < end:
        app.processEvents()
        if ctx.tasks.is_busy():
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet_s:
            return
        time.sleep(0.02)


def _shoot(app, ctx, window, name: str, out: Path) -> None:  # type: ignore[no-untyped-def]
    _settle(app, ctx)
    window.repaint()
    app.processEvents()
    path = out / f"{name}.png"
    window.grab().save(str(path))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _demo_job(ctx) -> None:  # type: ignore[no-untyped-def]
    ctx.job.update({"name": "pirate-persona", "model": {"source": "smollm2-135m-instruct"},
                    "dataset": {"path": "resources/datasets/pirate-persona.jsonl",
                                "max_length": 256}})


def run(args: argparse.Namespace) -> int:
    from PySide6.QtWidgets import QApplication

    from gui.controllers.settings import AppSettings
    from gui.pages.page_list import PAGES
    from gui.widgets.theme import apply_theme
    from gui.window.app import create_app
    from gui.window.qt_main_window import QtMainWindow

    os.chdir(ROOT)  # the demo dataset path is relative, as users write it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    settings = AppSettings(str(Path(tempfile.mkdtemp()) / "settings.ini"))
    settings.set_value("advisor/vram_gb", 8.0)
    ctx = create_app(app, theme="light", settings=settings)
    _demo_job(ctx)
    window = QtMainWindow(ctx)
    window.ask_to_save = False
    window.resize(*SIZE)
    window.show()
    if args.run:
        run_dir = Path(args.run).resolve()
        ctx.job.set("output.runs_dir", str(run_dir.parent))
        window.show_page("train")
        window.page("train").controller.attach(run_dir)
    order = [p.key for p in PAGES]
    for key in args.pages or order:
        index = order.index(key) + 1  # file names keep the flow's order
        window.show_page(key)
        if key == "compare" and args.comparison:
            window.page(key).open_folder(args.comparison)
        if key == "runs" and args.run:
            _settle(app, ctx)
            window.page(key).select_runs([Path(args.run).resolve()])
        _shoot(app, ctx, window, f"{index:02d}-{key}", out)
        if key == "hyperparameters":
            page = window.page(key)
            page.advanced_toggle.setChecked(True)
            _shoot(app, ctx, window, f"{index:02d}-{key}-advanced", out)
            page.advanced_toggle.setChecked(False)
    if not args.pages or "method" in args.pages:
        apply_theme(app, dark=True)
        window.close()
        dark = QtMainWindow(ctx)  # rebuilt so every view picks up the dark palette
        dark.ask_to_save = False
        dark.resize(*SIZE)
        dark.show()
        dark.show_page("method")
        _shoot(app, ctx, dark, "99-method-dark", out)
        dark.shutdown()
        dark.close()
    window.shutdown()
    ctx.tasks.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return _under_xvfb(argv)
    return run(_parse(argv))


if __name__ == "__main__":
    sys.exit(main())
