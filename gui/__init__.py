"""Tunesmith's PySide6 front end.

Views are built from :class:`gui.controllers.job_model.JobModel` and subscribe to its signals; heavy
engine calls (torch, transformers, peft) run in :class:`gui.controllers.tasks.TaskRunner` workers
and are imported only when first needed, so the window opens fast.
"""

__all__: list[str] = []
