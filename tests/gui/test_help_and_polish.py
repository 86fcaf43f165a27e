"""Help menu, shortcuts, window icon, file-dialog folders, Open folder failures, emoji font,
and the finished run's clock."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QKeySequence
from PySide6.QtWidgets import QFileDialog

from engine import events as ev
from gui.pages.page_list import PAGES

ENGINE_WAIT_MS = 60_000


def test_help_menu_about_box_names_versions_and_gpu(qtbot, window) -> None:
    titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert "Help" in titles and "Run" in titles and "Go" in titles
    window.about_action.trigger()
    dialog = window.help_dialog
    assert dialog is not None and dialog.windowTitle() == "About Tunesmith"
    qtbot.waitUntil(lambda: "transformers" in dialog.browser.toPlainText(),
                    timeout=ENGINE_WAIT_MS)
    text = dialog.browser.toPlainText()
    import peft
    import torch

    for needle in ("torch", torch.__version__.split("+")[0], "peft", peft.__version__,
                   "bitsandbytes", "CUDA", "GPU"):
        assert needle in text, needle


def test_guide_and_shortcuts_windows(qtbot, window) -> None:
    window.guide_action.trigger()
    assert "guide" in window.help_dialog.browser.toPlainText().lower()
    window.shortcuts_action.trigger()
    text = window.help_dialog.browser.toPlainText()
    for keys in ("Ctrl+Return", "Ctrl+.", "Ctrl+1", "Ctrl+9", "Ctrl+S"):
        assert QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText) in text


def test_ctrl_digits_switch_pages_and_start_stop_reach_the_train_page(qtbot, window) -> None:
    assert len(window.page_actions) == min(len(PAGES), 9)
    for i in range(min(len(PAGES), 9)):
        assert window.page_actions[i].shortcut() == QKeySequence(f"Ctrl+{i + 1}")
    window.page_actions[2].trigger()
    assert window.current_key() == PAGES[2].key
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert window.current_key() == PAGES[1].key
    clicked: list[str] = []
    train = window.page("train")
    train.start_button.clicked.disconnect()
    train.start_button.clicked.connect(lambda: clicked.append("start"))
    train.start_button.setEnabled(True)
    window.start_action.trigger()
    assert window.current_key() == "train" and clicked == ["start"]


def test_window_icon_from_resources_or_none(tmp_path, monkeypatch, qapp) -> None:
    from gui.window import help as app_help

    monkeypatch.setattr(app_help.resources, "root", lambda: tmp_path)
    assert app_help.window_icon() is None  # no icon files: the platform's default
    (tmp_path / "icons").mkdir()
    (tmp_path / "icons" / "tunesmith.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        '<rect width="64" height="64" fill="#3d7bd9"/></svg>')
    icon = app_help.window_icon()
    assert icon is not None and not icon.pixmap(32, 32).isNull()


def test_file_dialogs_start_in_the_last_folder_or_home(ctx, tmp_path, monkeypatch) -> None:
    from gui.controllers import file_dialogs

    seen: list[str] = []
    chosen = tmp_path / "data" / "rows.jsonl"
    chosen.parent.mkdir()
    chosen.write_text("{}\n")

    def fake(_parent, _title, start, _filters):  # type: ignore[no-untyped-def]
        seen.append(start)
        return str(chosen), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", fake)
    monkeypatch.chdir(tmp_path)  # the launch folder: never where a dialog opens
    assert file_dialogs.open_file(None, ctx.settings, "Dataset", "*") == str(chosen)
    assert seen[0] == str(Path.home())
    file_dialogs.open_file(None, ctx.settings, "Dataset", "*")
    assert seen[1] == str(chosen.parent)  # the last folder used
    assert file_dialogs.start_dir(ctx.settings, "run.yaml") == str(chosen.parent / "run.yaml")


def test_open_folder_reports_a_missing_file_manager(tmp_path, monkeypatch, qapp) -> None:
    from gui.controllers import file_dialogs

    monkeypatch.setattr("gui.controllers.file_dialogs.QDesktopServices.openUrl",
                        lambda _url: False)
    assert "No file manager answered" in file_dialogs.open_folder(tmp_path)
    assert "does not exist" in file_dialogs.open_folder(tmp_path / "gone")
    monkeypatch.setattr("gui.controllers.file_dialogs.QDesktopServices.openUrl",
                        lambda _url: True)
    assert file_dialogs.open_folder(tmp_path) == ""


def test_emoji_font_fallback(qapp) -> None:
    from PySide6.QtGui import QFontDatabase

    from gui.widgets.theme import EMOJI_FONTS, font_with_fallbacks

    font = font_with_fallbacks(QFont("DejaVu Sans"))
    installed = [f for f in EMOJI_FONTS if f in QFontDatabase.families()]
    assert font.families()[0] == "DejaVu Sans"
    assert font.families()[1:] == installed
    if Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file():
        assert "Noto Color Emoji" in font.families()


def test_finished_clock_is_the_logs_clock() -> None:
    from gui.pages.qt_train_page import finished_clock

    step = ev.Step(step=8, max_steps=8, loss=1.0, elapsed_s=178.0)
    done = ev.RunFinished(status="completed", step=8, elapsed_s=259.4)
    text = finished_clock([step, done], step)
    assert "4:19" in text and "259 s" in text and "2:58" in text
    assert finished_clock([step], step) == "elapsed 2:58"
