"""The Compare page's controller: one ``python -m engine compare ... --events-stdout`` child.

It reuses the evaluate/export machinery (:class:`gui.controllers.eval_controllers._JobController`
and its :class:`EngineChild`): ``progress`` per step of the method being trained,
``method_changed(dict)`` when a method starts or ends (its ``method_compared`` event), and
``result(dict)`` with the comparison's ``comparison.json`` once the child exits. Stop writes the
comparison's STOP file (the method in training finishes its step, the rest are skipped), then
kills the child after a grace period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from engine import compare, runs
from engine.config import JobConfig, save_job
from engine.errors import UserError
from engine.launch import engine_command
from gui.controllers.eval_controllers import _JobController

STOP_GRACE_MS = 60_000  # a training step of a big model on the CPU can take this long


class CompareController(_JobController):
    method_changed = Signal(object)  # the method_compared event (method, status, row…)
    result = Signal(object)  # comparison.json

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.folder: Path | None = None
        self._kill_timer = QTimer(self, singleShot=True, interval=STOP_GRACE_MS)
        self._kill_timer.timeout.connect(self.child.kill)

    @staticmethod
    def command(job_file: str | Path, out: str | Path, *, methods: list[str] | None = None,
                steps: int | None = None) -> list[str]:
        args = [str(job_file), "--out", str(out), "--events-stdout"]
        if methods:
            args += ["--methods", ",".join(methods)]
        if steps:
            args += ["--steps", str(steps)]
        return engine_command("compare", *args)

    def new_folder(self, job: JobConfig) -> Path:
        """A fresh comparison folder under the job's runs folder, the job saved in it."""
        folder = runs.create_run_dir(job.output.runs_dir, f"compare-{job.name}")
        save_job(job, folder / runs.JOB_FILE)
        return folder

    def start(self, job: JobConfig, *, methods: list[str] | None = None,
              steps: int | None = None) -> None:
        if self.is_running():
            return
        self.folder = self.new_folder(job)
        self._run(self.command(self.folder / runs.JOB_FILE, self.folder, methods=methods,
                               steps=steps))

    def stop(self) -> None:
        if self.is_running() and self.folder is not None:
            (self.folder / runs.STOP_FILE).touch()
            self._kill_timer.start()

    def shutdown(self) -> None:
        self._kill_timer.stop()
        super().shutdown()

    def _on_message(self, data: dict[str, Any]) -> None:
        super()._on_message(data)
        if data.get("type") == "method_compared":
            self.method_changed.emit(data)

    def _on_exited(self, code: int) -> None:
        self._kill_timer.stop()
        super()._on_exited(code)

    def _succeeded(self) -> None:
        assert self.folder is not None
        try:
            data = compare.load_comparison(self.folder)
        except UserError as exc:
            self.failed.emit(f"the comparison finished but its result is unreadable: {exc}")
            self._set_state("failed")
            return
        self.result.emit(data)
        self._set_state("done")
