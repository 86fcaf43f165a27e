"""The one question asked before a model's own code runs (``model.trust_remote_code``).

Every page that starts an engine child for a run or job (Train, Runs' Resume, Evaluate, Chat,
Export) mixes in :class:`RemoteCodeAsker` and calls :meth:`RemoteCodeAsker.confirm_run` (or
:meth:`RemoteCodeAsker.confirm_remote_code` for a job not yet saved) first. Tests replace
``confirm_remote_code`` on the instance to answer.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

from engine.config import load_job
from engine.errors import UserError
from engine.runs import JOB_FILE


def remote_code_source(run_dir: str | Path) -> str | None:
    """The model source of a run folder's job when it trusts remote code, else None."""
    try:
        job = load_job(Path(run_dir) / JOB_FILE)
    except (UserError, OSError, ValueError):
        return None
    return job.model.source if job.model.trust_remote_code else None


class RemoteCodeAsker:
    """Mixed into a QWidget: ask before a job with ``trust_remote_code`` runs."""

    def confirm_run(self, run_dir: str | Path) -> bool:
        """True when ``run_dir``'s job runs no code of its own, or the user said Yes."""
        source = remote_code_source(run_dir)
        return source is None or self.confirm_remote_code(source)

    def confirm_remote_code(self, source: str) -> bool:
        """The dialog; True only for Yes (the default is No)."""
        box = self.remote_code_box(source)
        box.exec()
        return box.clickedButton() is box.button(QMessageBox.StandardButton.Yes)

    def remote_code_box(self, source: str) -> QMessageBox:
        parent = self if isinstance(self, QWidget) else None
        box = QMessageBox(
            QMessageBox.Icon.Warning, "Run the model's own code?",
            f"This job has model.trust_remote_code on. Python code that ships with "
            f"{source} will run on this computer, with your permissions, when the model, its "
            "config and its tokenizer load.\n\nOnly go on if you trust that repository.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, parent)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box
