"""The Train page: start/stop/resume the job, live curves, gauges, samples, log, diagnostics.

Everything shown comes from the :class:`~gui.controllers.run_controller.RunController`'s events: the
views here never touch the child process or the reader thread.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QCoreApplication, Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine import events as ev
from engine.config import load_job
from engine.diagnostics import (
    ADVICE,
    advisor_retry_settings,
    describe_settings,
    keep_best_checkpoint,
    oom_retry_settings,
)
from engine.errors import ConfigError, UserError
from engine.runs import JOB_FILE, last_checkpoint, scan_runs
from gui.controllers.run_controller import RunController, shared_controller
from gui.widgets.qt_banners import QtBannerArea
from gui.widgets.qt_gauges import QtGauges, TelemetrySampler
from gui.widgets.qt_plots import QtTrainingPlots
from gui.widgets.qt_remote_code import RemoteCodeAsker
from gui.widgets.qt_widgets import card, connect_handlers, page_layout

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

LOG_LINES = 3000
KEEP, STOP, CANCEL = "keep", "stop", "cancel"


class _LogStream:
    """A text stream for ``engine.train_cli.ProgressBar``: the GUI logs what the CLI prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line.strip())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class QtSamples(QTextBrowser):
    """The sample answers at each evaluation, newest first."""

    def __init__(self, controller: RunController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.samples: list[ev.Sample] = []
        self.setOpenLinks(False)
        self._timer = QTimer(self, singleShot=True, interval=200)
        self._timer.timeout.connect(self._on_render)
        controller.reset.connect(self._on_reset)
        controller.events.connect(self._on_events)
        self._on_reset()

    def _on_reset(self, _run_dir: str = "") -> None:
        self.samples = []
        self._on_render()

    def _on_events(self, batch: list[ev.Event]) -> None:
        new = [e for e in batch if isinstance(e, ev.Sample)]
        if new:
            self.samples.extend(new)
            self._timer.start()

    def _on_render(self) -> None:
        if not self.samples:
            self.setHtml(SAMPLES_HINT)
            return
        parts = []
        for s in reversed(self.samples[-24:]):
            parts.append(f"<p><b>step {s.step}</b> · <i>{html.escape(s.prompt)}</i><br>"
                         f"{html.escape(s.text) or '<span style=color:gray>(empty)</span>'}</p>")
        self.setHtml("".join(parts))


class QtTrainPage(RemoteCodeAsker, QWidget):
    """Built from the app context; shares its controller with the Runs page."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.controller = shared_controller(ctx.job)
        self.sampler = TelemetrySampler(parent=self)
        self._after_finish: list[Any] = []
        self._last_step: ev.Step | None = None
        self._stage: ev.Progress | None = None  # the wait under way (cleared by a step)
        self._t0 = time.time()  # when the shown run (segment) began
        self._device = ""
        self._oom_settings: dict[str, Any] = {}
        self._gpus = 1  # detected on the worker pool (engine.telemetry, through NVML)
        self._build()
        # QProgressBar.setValue repaints at once: update the bar and ETA ~4 times a second.
        self._progress_timer = QTimer(self, singleShot=True, interval=250)
        self._progress_timer.timeout.connect(self._on_progress_timer)
        # The elapsed clock ticks while a run is active, between steps and while stopping.
        self._clock = QTimer(self, interval=1000)
        self._clock.timeout.connect(self._render)
        connect_handlers(self.controller, self, "reset", "events", "log", "state_changed",
                         "finished")
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.sampler.stop)
        self.sampler.start()
        if self.controller.run_dir is not None:
            self._on_reset(str(self.controller.run_dir))
            self._on_events(self.controller.history)
        self._on_state_changed(self.controller.state)
        self._look_for_background_runs()
        self.job.changed.connect(self._on_job_changed)
        self._on_job_changed("")
        self.ctx.tasks.submit("train_gpu_count", "Counting GPUs", _gpu_count,
                              self._on_gpu_count)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = page_layout(self)
        top = QHBoxLayout()
        title = QLabel("Train")
        title.setObjectName("pageTitle")
        title.setStyleSheet("font-size: 18pt; font-weight: 600;")
        self.run_label = QLabel("No run yet — press Start to train the job.")
        self.run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.start_button = QPushButton("▶ Start")
        self.stop_button = QPushButton("■ Stop")
        self.resume_button = QPushButton("⟳ Resume")
        self.start_button.setToolTip("Train the job in a new run folder")
        self.stop_button.setToolTip("Finish this step, save a checkpoint and stop "
                                    "(press again to stop at once)")
        self.resume_button.setToolTip("Continue this run from its last checkpoint")
        self.start_button.clicked.connect(self._on_start)
        self.stop_button.clicked.connect(self._on_stop)
        self.resume_button.clicked.connect(self._on_resume)
        top.addWidget(title)
        top.addSpacing(12)
        top.addWidget(self.run_label, 1)
        # shown when more than one GPU is detected: sets training.devices (engine.train_launch)
        self.gpus_box = QCheckBox("Use 1 GPU")
        self.gpus_box.setVisible(False)
        self.gpus_box.setToolTip("Train data-parallel on every GPU, one process each "
                                 "(training.devices); the effective batch grows with them")
        self.gpus_box.toggled.connect(self._on_use_gpus)
        top.addWidget(self.gpus_box)
        for button in (self.start_button, self.stop_button, self.resume_button):
            top.addWidget(button)
        layout.addLayout(top)
        progress = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.eta_label = QLabel("")
        self.eta_label.setMinimumWidth(260)
        self.eta_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.batch_label = QLabel("")  # micro-batch × accumulation × devices
        self.batch_label.setToolTip("Effective batch: samples per optimizer step")
        progress.addWidget(self.progress, 1)
        progress.addWidget(self.batch_label)
        progress.addWidget(self.eta_label)
        layout.addLayout(progress)
        self.banners = QtBannerArea()
        layout.addWidget(self.banners)
        self.plots = QtTrainingPlots(self.controller)
        self.samples = QtSamples(self.controller)
        self.gauges = QtGauges(self.sampler, self.controller)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        samples_card, inner = card("Sample answers")
        inner.addWidget(self.samples)
        gauges_card, inner2 = card("Resources")
        inner2.addWidget(self.gauges)
        side_layout.addWidget(samples_card, 3)
        side_layout.addWidget(gauges_card, 2)
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setStyleSheet("font-family: monospace; font-size: 9pt;")
        self.log_view.setPlaceholderText("The engine's log appears here.")
        across = QSplitter(Qt.Orientation.Horizontal)
        across.addWidget(self.plots)
        across.addWidget(side)
        across.setStretchFactor(0, 3)
        across.setStretchFactor(1, 1)
        across.setSizes([740, 300])
        down = QSplitter(Qt.Orientation.Vertical)
        down.addWidget(across)
        down.addWidget(self.log_view)
        down.setStretchFactor(0, 4)
        down.setStretchFactor(1, 1)
        down.setSizes([480, 90])
        layout.addWidget(down, 1)

    # ------------------------------------------------------------------ actions
    def _on_start(self) -> None:
        job = self.job.job
        if not job.dataset.path:
            self.banners.show_banner("no_dataset", "error", "No dataset",
                                     "Choose a dataset on the Data page first.")
            return
        self.banners.remove("no_dataset")
        if job.model.trust_remote_code and not self.confirm_remote_code(job.model.source):
            return
        try:
            self.controller.start(job)
        except (OSError, RuntimeError) as exc:
            self.banners.show_banner("start_failed", "error", "Cannot start", str(exc))

    def _on_stop(self) -> None:
        if self.controller.state == "stopping":
            self.controller.kill()  # a second press: stop now
        else:
            self.controller.stop()

    def _on_resume(self) -> None:
        run_dir = self.controller.run_dir
        if run_dir is None:
            return
        if not self.confirm_run(run_dir):
            return
        self.controller.resume(run_dir)

    def start_job(self) -> Path | None:
        """Start the window's job (the Start button)."""
        self._on_start()
        return self.controller.run_dir if self.controller.is_active() else None

    # ------------------------------------------------------------------ events
    def _on_reset(self, run_dir: str) -> None:
        self.banners.clear()
        self._after_finish = []
        self._last_step = None
        self._stage = None
        self._t0 = 0.0  # set by the first event (a replay's events are older than now)
        self.run_label.setText(f"Run: {Path(run_dir).name}")
        self.run_label.setToolTip(run_dir)
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting the training process…")
        self.eta_label.setText("")
        self.log_view.clear()

    def _on_events(self, batch: list[ev.Event]) -> None:
        stream = _LogStream()
        from engine.train_cli import ProgressBar

        bar = ProgressBar(stream)  # type: ignore[arg-type]
        for event in batch:
            if not self._t0:
                self._t0 = event.time
            if isinstance(event, ev.Step):
                self._last_step, self._stage = event, None
            elif isinstance(event, ev.RunStarted):
                self._device = event.device
                if event.effective_batch:
                    self._show_batch(event.batch_size, event.grad_accum, event.devices)
                self._ask_predicted_peak(event)
            elif isinstance(event, ev.Progress):
                done = event.total > 0 and event.current >= event.total
                self._stage = None if done else event
            elif isinstance(event, ev.Checkpoint) and self._stage is not None \
                    and self._stage.stage == "checkpoint":
                self._stage = None
            elif isinstance(event, ev.Warning | ev.Error):
                self._show_diagnostic(event)
            if not isinstance(event, ev.Step) or _log_step(event):
                bar(event)
        if not self._progress_timer.isActive():
            self._progress_timer.start()
        if stream.lines:
            self.log_view.appendPlainText("\n".join(stream.lines))

    def _on_log(self, lines: list[str]) -> None:
        self.log_view.appendPlainText("\n".join(lines))

    def _on_progress_timer(self) -> None:
        if self.controller.state != "finished":
            self._render()

    def _render(self) -> None:
        """The bar names the wait under way (loading, tokenizing, first step, stopping,
        saving); the elapsed clock runs on between steps."""
        stage = _stage_text(self._stage) if self._stage is not None else ""
        stopping = self.controller.state == "stopping"
        if stopping and (self._stage is None or self._stage.stage in ("first_step", "tokenize",
                                                                      "load_model")):
            stage = ev.STAGES["stopping"] + "…"
        s = self._last_step
        if s is None:
            if self._stage is not None and self._stage.total > 1:
                self.progress.setRange(0, self._stage.total)
                self.progress.setValue(self._stage.current)
            else:
                self.progress.setRange(0, 0)  # busy: a wait of unknown length
            self.progress.setFormat(stage or "starting the training process…")
            since = self._t0 or time.time()
            self.eta_label.setText(f"elapsed {_duration(time.time() - since)}"
                                   if self.controller.is_active() else "")
            return
        self._show_progress(s, stage, ticking=self.controller.is_active())

    def _show_progress(self, s: ev.Step, stage: str = "", *, ticking: bool = False) -> None:
        total = max(s.max_steps, 1)
        self.progress.setRange(0, total)
        self.progress.setValue(min(s.step, total))
        self.progress.setFormat(f"step {s.step} / {total}  ·  loss {s.loss:.4f}"
                                + (f"  ·  {stage}" if stage else ""))
        # Between steps (a slow one, an evaluation, stopping) the clock goes on from the step.
        elapsed = s.elapsed_s + (max(0.0, time.time() - s.time) if ticking else 0.0)
        eta = "?" if s.eta_s is None else _duration(s.eta_s)
        tail = "" if stage and self.controller.state == "stopping" else f"  ·  ETA {eta}"
        self.eta_label.setText(f"{s.tokens_per_s:,.0f} tok/s  ·  elapsed "
                               f"{_duration(elapsed)}{tail}")

    def _on_state_changed(self, state: str) -> None:
        active = self.controller.is_active()
        self.start_button.setEnabled(not active)
        self.stop_button.setEnabled(active)
        self.stop_button.setText("■ Stop now" if state == "stopping" else "■ Stop")
        self.resume_button.setEnabled(not active and self._can_resume())
        if active:
            self._clock.start()
            self._render()
        else:
            self._clock.stop()

    def _on_finished(self, status: str) -> None:
        self._progress_timer.stop()
        self._clock.stop()
        self._stage = None
        if self._last_step is not None:
            self._show_progress(self._last_step)
        self.progress.setRange(0, max(self.progress.maximum(), 1))
        text = {"completed": "completed", "stopped": "stopped (resume continues it)",
                "failed": "failed", "interrupted": "interrupted (resume continues it)"}
        self.progress.setFormat(f"{self.progress.format().split('  ·  ')[0]}  ·  "
                                f"{text.get(status, status)}")
        if status == "completed":
            self.progress.setValue(self.progress.maximum())
        clock = finished_clock(self.controller.history, self._last_step)
        if clock:
            self.eta_label.setText(clock)
        self._banners_after_run()
        self.resume_button.setEnabled(self._can_resume())
        actions, self._after_finish = self._after_finish, []
        for action in actions:
            action()

    def _banners_after_run(self) -> None:
        """Actions that stop the run make no sense once it has ended."""
        for banner in self.banners.banners.values():
            stop = banner.actions.get("Stop the run")
            if stop is not None:
                stop.hide()
            keep = banner.actions.get("Stop and keep the best checkpoint")
            if keep is not None:
                keep.setText("Keep the best checkpoint")

    def _can_resume(self) -> bool:
        run_dir = self.controller.run_dir
        if run_dir is None:
            return False
        done = any(isinstance(e, ev.RunFinished) and e.status == "completed"
                   for e in self.controller.history[-3:])
        return not done and last_checkpoint(run_dir) is not None

    # ------------------------------------------------------------------ diagnostics
    def _show_diagnostic(self, event: ev.Warning | ev.Error) -> None:
        if isinstance(event, ev.Error):
            self._show_error(event)
            return
        if event.code == "divergence":
            banner = self.banners.show_banner(
                "divergence", "warning", "The loss is diverging",
                f"{_sentence(event.message)} {ADVICE['divergence']}")
            banner.add_action("Stop the run", self._on_stop)
            banner.add_action("Lower learning rate 10× and restart", self._on_lower_lr_restart)
        elif event.code == "overfitting":
            banner = self.banners.show_banner(
                "overfitting", "warning", "The model is overfitting",
                f"{_sentence(event.message)} {ADVICE['overfitting']}")
            banner.add_action("Stop and keep the best checkpoint", self._on_keep_best)
        elif event.code.startswith("memory_prediction"):
            self.banners.show_banner(event.code, "info", "Memory check", event.message)
        else:
            self.banners.show_banner(event.code or "warning", "warning", "Warning",
                                     event.message)

    def _show_error(self, event: ev.Error) -> None:
        if event.code == "non_finite_loss":
            banner = self.banners.show_banner(
                "non_finite_loss", "error", "The loss became NaN — the run stopped",
                f"{_sentence(event.message)} {ADVICE['non_finite_loss']}")
            banner.add_action("Lower learning rate 10× and restart", self._on_lower_lr_restart)
        elif event.code == "cuda_oom":
            job = self._run_job()
            self._show_oom(oom_retry_settings(job, cuda=self._device.startswith("cuda")))
            if self._device.startswith("cuda"):
                self.ctx.tasks.submit("train_oom_advice", "Asking the advisor",
                                      lambda: advisor_retry_settings(job), self._on_oom_advice)
        else:
            advice = f" → {event.advice}" if event.advice else ""
            self.banners.show_banner(event.code or "error", "error", "The run failed",
                                     f"{event.message}{advice}")

    def _show_oom(self, settings: dict[str, Any], source: str = "") -> None:
        self._oom_settings = settings
        lines = ", ".join(describe_settings(settings))
        banner = self.banners.show_banner(
            "cuda_oom", "error", "Out of GPU memory — the run stopped",
            f"{ADVICE['cuda_oom']} Retry with {lines}{source}.")
        banner.add_action("Retry with these", self._on_retry_oom)

    def _on_oom_advice(self, settings: dict[str, Any] | None) -> None:
        if settings and "cuda_oom" in self.banners.banners:
            self._show_oom(settings, " (the advisor's recommendation for this GPU)")

    def _run_job(self) -> dict[str, Any]:
        started = next((e for e in reversed(self.controller.history)
                        if isinstance(e, ev.RunStarted)), None)
        if started is not None and started.job:
            return started.job
        return self.job.job.to_dict()

    def _load_run_job(self) -> bool:
        """Put the shown run's job into the window's job model (retries change that job)."""
        run_dir = self.controller.run_dir
        if run_dir is None or not (run_dir / JOB_FILE).is_file():
            return True
        try:
            self.job.replace(load_job(run_dir / JOB_FILE))
        except (UserError, ConfigError, OSError) as exc:
            self.banners.show_banner("retry_failed", "error", "Cannot retry", str(exc))
            return False
        return True

    def _restart_with(self, partial: dict[str, Any]) -> None:
        if self.controller.is_active():
            self._after_finish.append(lambda: self._restart_with(partial))
            self.controller.stop()
            return
        if self._load_run_job():
            self.job.update(partial)
            self._on_start()

    def _on_lower_lr_restart(self) -> None:
        lr = float(self._run_job().get("training", {}).get("learning_rate", 2e-4))
        self._restart_with({"training": {"learning_rate": lr / 10}})

    def _on_retry_oom(self) -> None:
        self._restart_with(self._oom_settings)

    def _on_keep_best(self) -> None:
        if self.controller.is_active():
            self._after_finish.append(self._on_keep_best)
            self.controller.stop()
            return
        run_dir = self.controller.run_dir
        best = keep_best_checkpoint(run_dir) if run_dir is not None else None
        message = (f"kept {best.name} (lowest eval loss) as the run's result"
                   if best else "no checkpoint was saved at or before the best evaluation")
        self.banners.remove("overfitting")
        self.log_view.appendPlainText(f"best checkpoint: {message}")
        self.banners.show_banner("best_kept", "info", "Best checkpoint", message.capitalize())

    # ------------------------------------------------------------------ devices and batch
    def _on_gpu_count(self, count: int) -> None:
        self._gpus = count
        self.gpus_box.setVisible(count > 1)
        self.gpus_box.setText(f"Use {count} GPUs")
        self.gpus_box.setChecked(self.job.job.training.devices > 1)

    def _on_use_gpus(self, on: bool) -> None:
        wanted = self._gpus if on else 1
        if self.job.job.training.devices != wanted:
            self.job.set("training.devices", wanted)

    def _on_job_changed(self, key: str) -> None:
        if key in ("", "training.batch_size", "training.grad_accum", "training.devices") \
                and not self.controller.is_active():
            t = self.job.job.training
            self._show_batch(t.batch_size, t.grad_accum, t.devices)

    def _show_batch(self, batch: int, accum: int, devices: int) -> None:
        from engine.distributed import effective_batch

        per = f"{batch} × {accum}" + (f" × {devices} GPUs" if devices > 1 else "")
        self.batch_label.setText(f"batch {per} = {effective_batch(batch, accum, devices)}")

    def _ask_predicted_peak(self, started: ev.RunStarted) -> None:
        job, device = started.job, started.device
        if not device.startswith("cuda"):
            return  # the marker goes on the GPU gauges; the CPU has none
        self.ctx.tasks.submit("train_predicted_peak", "Predicting peak memory",
                              lambda: predicted_peak_gb(job, device),
                              self.gauges.set_predicted_peak)

    # ------------------------------------------------------------------ background runs
    def _look_for_background_runs(self) -> None:
        runs_dir = self.job.job.output.runs_dir
        self.ctx.tasks.submit("train_background_runs", "Looking for running trainings",
                              lambda: [r for r in scan_runs(runs_dir) if r.running],
                              self._on_background_runs)

    def _on_background_runs(self, running: list[Any]) -> None:
        if not running or self.controller.is_active():
            return
        run = running[0]
        banner = self.banners.show_banner(
            "background_run", "info", "A run is training in the background",
            f"{run.name}: step {run.step} of {run.max_steps}. Watch it to follow its curves.")
        banner.add_action("Watch", lambda: self.attach(run.run_dir))

    def attach(self, run_dir: str | Path) -> None:
        """Follow a run (running or not): replay its events, then tail them."""
        if self.controller.is_active():
            return
        self.controller.attach(run_dir)

    # ------------------------------------------------------------------ closing
    def can_close(self) -> bool:
        """Asked by the window before it closes: keep a running training, stop it, or cancel."""
        if not self.controller.is_active() or self.controller.state == "stopping":
            return True
        choice = self.ask_keep_running()
        if choice == CANCEL:
            return False
        if choice == KEEP:
            self.controller.detach()
        else:
            self.controller.stop()
        return True

    def ask_keep_running(self) -> str:
        box = QMessageBox(QMessageBox.Icon.Question, "A run is training",
                          "The run keeps training in the background if you like; reopen "
                          "Tunesmith to watch it again (Runs page).", parent=self)
        keep = box.addButton("Keep training in background", QMessageBox.ButtonRole.AcceptRole)
        stop = box.addButton("Stop training", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return KEEP if clicked is keep else STOP if clicked is stop else CANCEL

    def shutdown(self) -> None:
        """Stop the telemetry thread and the run's reader (tests and app quit); a training
        child is stopped too unless the user chose to keep it in the background."""
        self.sampler.stop()
        self.controller.shutdown()


def predicted_peak_gb(job: dict[str, Any], device: str) -> float | None:
    """The advisor's expected peak (GiB) for a run's job, or None without an advisor."""
    try:
        from engine.advisor import predict_job_peak
        from engine.config import job_from_dict

        kind = "cuda" if device.startswith("cuda") else "cpu"
        return float(predict_job_peak(job_from_dict(job), kind).gib()["expected_gb"])
    except Exception:  # optional: the gauges work without the marker
        return None


SAMPLES_HINT = ("<p style='color:gray'>Sample answers appear here at each evaluation: at "
                "the end, or every N steps with Hyperparameters › Advanced › <i>Eval every N "
                "steps</i>. They answer the first held-out questions, or your own "
                "<i>Sample prompts</i> (same page). No held-out rows (Training › <i>Eval "
                "split</i> 0): no evaluation, no samples.</p>")


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _log_step(s: ev.Step) -> bool:
    """Log every step of a short run, every 10th of a long one."""
    return s.max_steps <= 200 or s.step % 10 == 0 or not math.isfinite(s.loss)


def finished_clock(history: list[ev.Event], last: ev.Step | None) -> str:
    """The run's time when it ends, on the log's clock: ``run_finished``'s seconds (loading
    included), with the training steps' own share."""
    end = next((e for e in reversed(history) if isinstance(e, ev.RunFinished)), None)
    if end is None or not end.elapsed_s:
        return f"elapsed {_duration(last.elapsed_s)}" if last is not None else ""
    text = f"whole run {_duration(end.elapsed_s)} ({end.elapsed_s:.0f} s, as in the log)"
    if last is not None:
        text += f"  ·  training steps {_duration(last.elapsed_s)}"
    return text


def _stage_text(p: ev.Progress) -> str:
    """'tokenizing (3/10)', 'loading the model', 'exporting: merging the adapter'…"""
    label = ev.STAGES.get(p.stage, p.stage.replace("_", " "))
    message = p.message.strip()
    if not message or message.lower().startswith(label.split()[0]):
        text = message or label
    elif p.stage in ("load_model", "first_step", "stopping", "checkpoint", "save"):
        text = message  # these messages say the stage themselves
    else:
        text = f"{label}: {message}"
    count = f" ({p.current}/{p.total})" if p.total > 1 else ""
    return f"{text}{count}…"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _gpu_count() -> int:
    from engine.distributed import gpu_count

    return gpu_count()
