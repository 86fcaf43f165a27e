from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import shiboken6

from gui.pages.page_list import PAGES
from gui.window.qt_main_window import QtMainWindow


def test_sidebar_lists_the_flow_in_order(window) -> None:
    titles = [window.sidebar.item(i).text().split(".")[-1].strip()
              for i in range(window.sidebar.count())]
    assert titles == ["Model", "Data", "Method", "Hyperparameters", "Train", "Evaluate",
                      "Export", "Compare methods", "Runs"]
    assert window.current_key() == "model"
    assert window.windowTitle() == "Tunesmith — untitled job"


def test_back_and_next_walk_the_pages(window) -> None:
    window.show_page("train")
    window.next_button.click()
    assert window.current_key() == "evaluate"
    window.back_button.click()
    window.back_button.click()
    assert window.current_key() == "hyperparameters"
    window.sidebar.setCurrentRow(len(PAGES) - 1)
    assert window.current_key() == "runs"
    assert not window.next_button.isEnabled()


def test_title_marks_unsaved_changes_and_recent_files_persist(window, ctx, tmp_path) -> None:
    ctx.job.set("name", "demo")
    assert window.windowTitle().endswith("*")
    path = str(tmp_path / "demo.yaml")
    assert window.save_job(path)
    assert window.windowTitle() == "Tunesmith — demo.yaml"
    assert ctx.settings.recent_files() == [str(Path(path).resolve())]
    assert [a.text() for a in window.recent_menu.actions()] == [str(Path(path).resolve())]


def test_geometry_is_saved_and_restored(qtbot, ctx) -> None:
    first = QtMainWindow(ctx)
    first.ask_to_save = False
    first.resize(700, 500)
    first.close()
    second = QtMainWindow(ctx)
    assert (second.width(), second.height()) == (700, 500)
    for win in (first, second):
        win.shutdown()
        shiboken6.delete(win)


def test_opening_a_job_file_loads_it(window, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: loaded\nmethod: {name: ia3}\n")
    assert window.open_job(str(path))
    assert window.ctx.job.job.method.name == "ia3"
    assert window.windowTitle() == "Tunesmith — job.yaml"


def test_busy_indicator_shows_only_after_a_second(qtbot, window) -> None:
    import time

    window.ctx.tasks.submit("test", "Waiting for the test…", lambda: time.sleep(1.4),
                            lambda _r: None)
    assert window.busy_bar.isHidden()
    qtbot.waitUntil(lambda: window.busy_bar.isVisible(), timeout=3000)
    assert window.busy_label.text() == "Waiting for the test…"
    qtbot.waitUntil(lambda: window.busy_bar.isHidden(), timeout=3000)


def test_opening_the_window_imports_no_heavy_library() -> None:
    # Worker tasks are held back: what is measured is the GUI thread's own imports.
    code = ("import sys; from PySide6.QtWidgets import QApplication; app = QApplication([]);"
            "from gui.controllers.tasks import TaskRunner; TaskRunner.submit = lambda *a, **k: 0;"
            "from gui.window.app import create_app, create_window;"
            " from gui.controllers.settings import AppSettings;"
            "import tempfile; ctx = create_app(app, settings=AppSettings(tempfile.mktemp()));"
            "w = create_window(ctx); w.show(); app.processEvents();"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'pyqtgraph')"
            " if m in sys.modules))")
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_python_m_gui_opens_the_job_given(tmp_path: Path) -> None:
    job = tmp_path / "given.yaml"
    job.write_text("name: given\nmethod: {name: dora}\n")
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "TUNESMITH_COLD_START": "1",
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    out = subprocess.run([sys.executable, "-m", "gui", str(job), "--page", "method"],
                         capture_output=True, text=True, env=env, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("visible ") for line in lines)
    assert "title Tunesmith — given.yaml" in lines


def test_closing_with_unsaved_changes_asks(window, monkeypatch) -> None:
    from PySide6.QtWidgets import QMessageBox

    window.ask_to_save = True
    window.ctx.job.set("name", "changed")
    answers = [QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Discard]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: answers.pop(0))
    assert not window.close()  # cancelled: the window stays
    assert window.isVisible()
    assert window.close()


def test_theme_choice_is_applied_and_saved(window, ctx, qapp) -> None:
    from gui.widgets.theme import is_dark

    window.theme_actions["dark"].trigger()
    assert is_dark()
    assert ctx.settings.value("theme") == "dark"
    window.theme_actions["light"].trigger()
    assert not is_dark()
    window.theme_actions["system"].trigger()
    assert ctx.settings.value("theme") == "system"
