"""The Tunesmith window: a sidebar with the flow (Model → … → Export, Runs) and one page each."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QGuiApplication,
    QKeySequence,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.config import JobConfig
from gui.controllers import job_files
from gui.controllers.app_context import AppContext
from gui.pages.page_list import PAGES, page_spec
from gui.widgets.qt_wheel_guard import guard_inputs
from gui.widgets.theme import THEMES, set_theme
from gui.window import help as app_help

BUSY_DELAY_MS = 1000  # show the busy indicator only for waits longer than a second
RELEASE_TASKS_MS = 100  # start queued engine calls this long after the first paint


class QtMainWindow(QMainWindow):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.pages: dict[str, QWidget] = {}
        self.ask_to_save = True  # about unsaved changes on close (off in tests and scripts)
        self._build_central()
        self._build_actions()
        self._build_run_and_go_menus()
        self._build_help_menu()
        self._apply_window_icon()
        self._build_status_bar()
        for signal in (self.job.changed, self.job.path_changed, self.job.dirty_changed):
            signal.connect(self._on_job_changed)
        ctx.tasks.busy_changed.connect(self._on_busy_changed)
        ctx.settings.recent_changed.connect(self._on_recent_changed)
        self._on_recent_changed()
        self._on_job_changed()
        self.resize(1280, 800)
        geometry = ctx.settings.geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.show_page(PAGES[0].key)

    # ------------------------------------------------------------------ layout
    def _build_central(self) -> None:
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(200)
        self.sidebar.setIconSize(QSize(0, 0))
        self.sidebar.setStyleSheet(
            "#sidebar { border: none; background: palette(alternate-base); padding-top: 8px; }"
            "#sidebar::item { padding: 9px 14px; }"
            "#sidebar::item:selected { background: palette(highlight);"
            " color: palette(highlighted-text); }")
        step = 0
        for spec in PAGES:
            step += spec.step
            text = f"{step}.  {spec.title}" if spec.step else f"     {spec.title}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, spec.key)
            item.setToolTip(spec.subtitle)
            self.sidebar.addItem(item)
        self.sidebar.currentRowChanged.connect(self._on_sidebar_row)
        self.stack = QStackedWidget()
        for _spec in PAGES:
            self.stack.addWidget(QWidget())  # replaced by the real page on first visit
        self.back_button = QPushButton("← Back")
        self.next_button = QPushButton("Next →")
        self.back_button.clicked.connect(self._on_back)
        self.next_button.clicked.connect(self._on_next)
        nav = QHBoxLayout()
        nav.setContentsMargins(20, 0, 20, 12)
        nav.addWidget(self.back_button)
        nav.addStretch(1)
        nav.addWidget(self.next_button)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.addWidget(self.stack, 1)
        right.addLayout(nav)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addLayout(right, 1)
        self.setCentralWidget(central)

    def _action(self, text: str, slot: object, shortcut: object = None) -> QAction:
        action = QAction(text, self)
        action.triggered.connect(slot)
        if shortcut is not None:
            action.setShortcut(shortcut)
        return action

    def _build_actions(self) -> None:
        self.new_action = self._action("&New job", self._on_new, QKeySequence.StandardKey.New)
        self.open_action = self._action("&Open job…", self._on_open, QKeySequence.StandardKey.Open)
        self.save_action = self._action("&Save job", self._on_save, QKeySequence.StandardKey.Save)
        self.save_as_action = self._action("Save job &as…", self._on_save_as,
                                           QKeySequence.StandardKey.SaveAs)
        self.copy_cli_action = self._action("Copy CLI command", self._on_copy_cli)
        quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.recent_menu = QMenu("Open &recent", self)
        menu = self.menuBar().addMenu("&File")
        for action in (self.new_action, self.open_action):
            menu.addAction(action)
        menu.addMenu(self.recent_menu)
        menu.addSeparator()
        for action in (self.save_action, self.save_as_action, self.copy_cli_action):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(quit_action)
        self._build_theme_menu()
        toolbar = self.addToolBar("Job")
        toolbar.setObjectName("jobToolbar")
        toolbar.setMovable(False)
        for action in (self.new_action, self.open_action, self.save_action,
                       self.save_as_action, self.copy_cli_action):
            toolbar.addAction(action)

    # ------------------------------------------------------------------ run, go, help
    def _build_run_and_go_menus(self) -> None:
        """Start/Stop from anywhere (Ctrl+Return, Ctrl+.) and Ctrl+1..9 for the pages."""
        run = self.menuBar().addMenu("&Run")
        self.start_action = self._action("&Start training", self._on_start_shortcut,
                                         QKeySequence("Ctrl+Return"))
        self.stop_action = self._action("S&top training", self._on_stop_shortcut,
                                        QKeySequence("Ctrl+."))
        run.addAction(self.start_action)
        run.addAction(self.stop_action)
        go = self.menuBar().addMenu("&Go")
        self.page_actions: list[QAction] = []
        for i, spec in enumerate(PAGES[:9]):
            action = self._action(spec.title, lambda _c=False, k=spec.key: self.show_page(k),
                                  QKeySequence(f"Ctrl+{i + 1}"))
            go.addAction(action)
            self.page_actions.append(action)
        for action in (self.start_action, self.stop_action, *self.page_actions):
            self.addAction(action)  # shortcuts work with the menu bar hidden too

    def _on_start_shortcut(self) -> None:
        self.show_page("train")
        button = self.page("train").start_button
        if button.isEnabled():
            button.click()

    def _on_stop_shortcut(self) -> None:
        button = self.page("train").stop_button
        if button.isEnabled():
            self.show_page("train")
            button.click()

    def shortcuts(self) -> list[tuple[str, str]]:
        """Every shortcut of the window's actions, as shown in Help › Keyboard shortcuts."""
        out = []
        for menu_action in self.menuBar().actions():
            for action in menu_action.menu().actions():
                keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
                if keys:
                    what = action.text().replace("&", "").rstrip("…")
                    out.append((keys, f"{menu_action.text().replace('&', '')}: {what}"))
        return out

    def _build_help_menu(self) -> None:
        menu = self.menuBar().addMenu("&Help")
        self.guide_action = self._action("Tunesmith &guide", self._on_guide,
                                         QKeySequence.StandardKey.HelpContents)
        self.shortcuts_action = self._action("&Keyboard shortcuts", self._on_shortcuts,
                                             QKeySequence("Ctrl+/"))
        self.about_action = self._action("&About Tunesmith", self._on_about)
        for action in (self.guide_action, self.shortcuts_action, self.about_action):
            menu.addAction(action)
        self.help_dialog: app_help.QtTextDialog | None = None

    def _show_dialog(self, dialog: app_help.QtTextDialog) -> None:
        if self.help_dialog is not None:
            self.help_dialog.close()
        self.help_dialog = dialog
        dialog.show()

    def _on_guide(self) -> None:
        self._show_dialog(app_help.guide_dialog(self))

    def _on_shortcuts(self) -> None:
        dialog = app_help.QtTextDialog("Keyboard shortcuts", self)
        dialog.set_html(app_help.shortcuts_html(self.shortcuts()))
        self._show_dialog(dialog)

    def _on_about(self) -> None:
        dialog = app_help.QtTextDialog("About Tunesmith", self)
        dialog.set_html("<h3>Tunesmith</h3><p>Reading the library versions and the GPU…</p>")
        self._show_dialog(dialog)
        from engine.telemetry import library_versions

        self.ctx.tasks.submit("about", "Reading library versions…", library_versions,
                              self._on_about_info)

    def _on_about_info(self, info: dict[str, object]) -> None:
        if self.help_dialog is not None and self.help_dialog.windowTitle() == "About Tunesmith":
            self.help_dialog.set_html(app_help.about_html(info))

    def _apply_window_icon(self) -> None:
        icon = app_help.window_icon()
        if icon is not None:  # no icon files (a bare checkout): the platform's default
            self.setWindowIcon(icon)

    def _build_theme_menu(self) -> None:
        menu = self.menuBar().addMenu("&View").addMenu("&Theme")
        group = QActionGroup(self)
        current = QApplication.instance().property("tunesmith_theme") or "system"
        self.theme_actions: dict[str, QAction] = {}
        for theme in THEMES:
            action = QAction("Follow the system" if theme == "system" else theme.capitalize(),
                             self, checkable=True, checked=theme == current)
            action.triggered.connect(lambda _c=False, t=theme: self._on_theme_chosen(t))
            group.addAction(action)
            menu.addAction(action)
            self.theme_actions[theme] = action

    def _on_theme_chosen(self, theme: str) -> None:
        set_theme(QApplication.instance(), theme)
        self.ctx.settings.set_value("theme", theme)
        self.statusBar().showMessage("Theme changed; charts and previews pick it up when "
                                     "they next redraw.", 4000)

    def _build_status_bar(self) -> None:
        self.path_label = QLabel()
        self.busy_label = QLabel()
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # indeterminate
        self.busy_bar.setFixedWidth(120)
        self.busy_bar.setMaximumHeight(14)
        bar = self.statusBar()
        bar.addWidget(self.path_label, 1)
        bar.addPermanentWidget(self.busy_label)
        bar.addPermanentWidget(self.busy_bar)
        self.busy_label.hide()
        self.busy_bar.hide()
        self._busy_timer = QTimer(self, singleShot=True, interval=BUSY_DELAY_MS)
        self._busy_timer.timeout.connect(self._on_busy_timeout)

    # ------------------------------------------------------------------ pages
    def page(self, key: str) -> QWidget:
        """The page ``key``, built on first use."""
        if key not in self.pages:
            index = [p.key for p in PAGES].index(key)
            widget = page_spec(key).build(self.ctx)
            guard_inputs(widget)  # the wheel changes only a focused input
            old = self.stack.widget(index)
            self.stack.insertWidget(index, widget)
            self.stack.removeWidget(old)
            old.deleteLater()
            self.pages[key] = widget
        return self.pages[key]

    def show_page(self, key: str) -> None:
        index = [p.key for p in PAGES].index(key)
        self.stack.setCurrentWidget(self.page(key))
        self.sidebar.blockSignals(True)
        self.sidebar.setCurrentRow(index)
        self.sidebar.blockSignals(False)
        self.back_button.setEnabled(index > 0)
        is_last = index == len(PAGES) - 1
        self.next_button.setEnabled(not is_last)
        self.next_button.setText("Next →" if is_last else f"Next: {PAGES[index + 1].title} →")

    def current_key(self) -> str:
        return PAGES[max(self.sidebar.currentRow(), 0)].key

    def _on_sidebar_row(self, row: int) -> None:
        if 0 <= row < len(PAGES):
            self.show_page(PAGES[row].key)

    def _on_back(self) -> None:
        self.show_page(PAGES[max(self.sidebar.currentRow() - 1, 0)].key)

    def _on_next(self) -> None:
        self.show_page(PAGES[min(self.sidebar.currentRow() + 1, len(PAGES) - 1)].key)

    # ------------------------------------------------------------------ job files
    def open_job(self, path: str) -> bool:
        return job_files.open_job(self, self.ctx, path)

    def save_job(self, path: str) -> bool:
        if not job_files.save_job(self, self.ctx, path):
            return False
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return True

    def _on_new(self) -> None:
        self.job.replace(JobConfig(), dirty=False)

    def _on_open(self) -> None:
        job_files.open_job_dialog(self, self.ctx)

    def _on_save(self) -> None:
        if self.job.path:
            self.save_job(self.job.path)
        else:
            self._on_save_as()

    def _on_save_as(self) -> None:
        job_files.save_job_dialog(self, self.ctx)

    def _on_copy_cli(self) -> None:
        command = self.job.cli_command("train")
        QGuiApplication.clipboard().setText(command)
        self.statusBar().showMessage(f"Copied: {command}", 4000)

    def _on_recent_changed(self) -> None:
        self.recent_menu.clear()
        files = self.ctx.settings.recent_files()
        for path in files:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _c=False, p=path: self.open_job(p))
        self.recent_menu.setEnabled(bool(files))

    # ------------------------------------------------------------------ status
    def _on_job_changed(self, *_args: object) -> None:
        name = Path(self.job.path).name if self.job.path else "untitled job"
        mark = "*" if self.job.dirty else ""
        self.setWindowTitle(f"Tunesmith — {name}{mark}")
        where = self.job.path or "not saved yet"
        self.path_label.setText(f"Job: {where}{'  (unsaved changes)' if mark else ''}")

    def _on_busy_changed(self, busy: bool, message: str) -> None:
        if busy and not self._busy_timer.isActive() and not self.busy_bar.isVisible():
            self._busy_timer.start()
        self.busy_label.setText(message)
        if not busy:
            self._busy_timer.stop()
            self.busy_label.hide()
            self.busy_bar.hide()

    def _on_busy_timeout(self) -> None:
        if self.ctx.tasks.is_busy():
            self.busy_label.setText(self.ctx.tasks.message())
            self.busy_label.show()
            self.busy_bar.show()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        # Engine calls queued while the window was built start once it is on screen.
        QTimer.singleShot(RELEASE_TASKS_MS, self.ctx.tasks.release)

    def _confirm_discard(self) -> bool:
        """Ask about unsaved changes: True to go on closing (after saving, or discarding)."""
        buttons = (QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                   | QMessageBox.StandardButton.Cancel)
        answer = QMessageBox.question(self, "Unsaved changes",
                                      "The job has unsaved changes. Save them first?",
                                      buttons, QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Save:
            self._on_save()
            return not self.job.dirty
        return answer == QMessageBox.StandardButton.Discard

    def shutdown(self) -> None:
        """Stop what pages run in the background (threads, timers): tests and app quit."""
        for page in self.pages.values():
            stop = getattr(page, "shutdown", None)
            if stop is not None:
                stop()

    def closeEvent(self, event: QCloseEvent) -> None:
        if (self.ask_to_save and self.isVisible() and self.job.dirty
                and not self._confirm_discard()):
            event.ignore()
            return
        # Hook (issue 6): a page may veto or prepare the close, e.g. the Train page asks
        # whether a running training keeps going in the background.
        for page in self.pages.values():
            can_close = getattr(page, "can_close", None)
            if can_close is not None and not can_close():
                event.ignore()
                return
        self.ctx.settings.set_geometry(self.saveGeometry())
        self.ctx.settings.set_last_job(self.job.path)  # reopened at the next start
        self.ctx.settings.sync()
        event.accept()
