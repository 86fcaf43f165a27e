"""The run's self-check: compare the measured peak memory with the advisor's prediction.

After the first optimizer steps the callback reads the real peak -- on CUDA
``torch.cuda.max_memory_reserved`` (the allocator's peak; the CUDA context is not in it, so
the prediction it is compared with leaves the context out too), on the CPU the process's peak
resident memory minus what was resident when training began (interpreter, libraries, loaded
weights, data), compared with the predicted growth during training. When they differ by more
than 10% it emits a ``warning`` event, and either way it stores the measured / predicted ratio
so the next prediction for the same model, method and device is closer.

The prediction uses the longest batch the model actually saw (a forward pre-hook records the
input shape), not the job's maximum length: short samples are padded only to the longest in
their batch. Nothing here may break a run: every failure becomes a warning event.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from engine.advisor import _corrections
from engine.advisor._memory import GIB
from engine.events import EventSink, Warning
from engine.telemetry_mem import peak_rss_bytes as _peak_rss_bytes

TOLERANCE = 0.10


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


class MemoryCheckCallback(TrainerCallback):
    """Checks the advisor's prediction against the measured peak after the first steps."""

    def __init__(self, job: Any, emit: EventSink, *, check_after_steps: int = 3) -> None:
        self.job = job
        self.emit = emit
        self.check_after_steps = max(1, int(check_after_steps))
        self.device = "cpu"
        self.done = False
        self.result: dict[str, Any] | None = None  # what was compared (for tests and logs)
        self._rss_begin = 0
        self._maxrss_begin = 0
        self._shape = (0, 0)  # the (batch, tokens) of the biggest batch seen
        self._hooks: list[Any] = []
        self._job_peak = 0.0  # the job-level prediction (Method page, gauges), bytes

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(self.job, "task", "sft") != "sft":
            self.done = True  # the advisor models causal language models only
            return
        self._guard(self._begin, args, kwargs.get("model"))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.done and state.global_step >= self.check_after_steps:
            self.done = True
            self._guard(self._check)
            self._remove_hook()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hook()

    # ------------------------------------------------------------------ the work

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # never raise into training
            self._remove_hook()
            self._warn("memory_check_failed", f"The memory self-check could not run: "
                       f"{type(exc).__name__}: {exc}")

    def _warn(self, code: str, message: str) -> None:
        try:
            self.emit(Warning(code=code, message=message))
        except Exception:
            pass

    def _begin(self, args: Any, model: Any) -> None:
        import torch

        device = getattr(getattr(args, "device", None), "type", None) or "cpu"
        self.device = device if device in ("cuda", "cpu", "mps") else "cpu"
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._rss_begin, self._maxrss_begin = _rss_bytes(), _peak_rss_bytes()
        if model is not None:
            from engine._loss import plain_head

            # The engine's chunked loss calls the decoder itself, not the model's forward.
            parts = plain_head(model)
            self._hooks = [m.register_forward_pre_hook(self._see_batch, with_kwargs=True)
                           for m in (model, *(parts[:1] if parts else ()))]

    def _see_batch(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = getattr(ids, "shape", None)
        if shape is not None and len(shape) == 2 and shape[0] * shape[1] > (
                self._shape[0] * self._shape[1]):
            self._shape = (int(shape[0]), int(shape[1]))

    def _remove_hook(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _measure(self) -> float | None:
        """Bytes to compare with the prediction, or None when it cannot be told."""
        if self.device == "cuda":
            import torch

            return float(torch.cuda.max_memory_reserved())
        peak = _peak_rss_bytes()
        if peak <= self._maxrss_begin:
            return None  # loading peaked higher than training: the peak is hidden
        return float(peak - self._rss_begin)

    def _check(self) -> None:
        from engine.advisor._recommend import predict_job_peak

        if self.device == "mps":
            return  # no peak counter to compare with
        measured = self._measure()
        if measured is None:
            return
        batch, tokens = self._shape
        kwargs = {"batch_size": batch, "seq_len": tokens} if batch else {}
        predicted = predict_job_peak(self.job, self.device, **kwargs).compared
        raw = predict_job_peak(self.job, self.device, corrected=False, **kwargs).compared
        self._job_peak = predict_job_peak(self.job, self.device).expected
        self._report(measured, predicted, raw, batch, tokens)

    def _report(self, measured: float, predicted: float, raw: float, batch: int,
                tokens: int) -> None:
        off = measured / predicted - 1 if predicted > 0 else 0.0
        model, method = self.job.model.source, self.job.method.name
        self.result = {"measured": measured, "predicted": predicted, "raw_predicted": raw,
                       "off": off, "device": self.device, "batch": batch, "tokens": tokens}
        _corrections.record(model, method, self.device, raw_predicted=raw, measured=measured)
        if abs(off) > TOLERANCE:
            what = ("peak reserved GPU memory" if self.device == "cuda"
                    else "growth of the process's peak memory during training")
            self._warn("memory_prediction_off", (
                f"The advisor predicted {predicted / GIB:.2f} GiB but the {what} was "
                f"{measured / GIB:.2f} GiB ({off:+.0%}) for {model} with {method} at "
                f"batch {batch} x {tokens} tokens. The next prediction for this model and "
                f"method is corrected. (At the job's own settings the advisor predicts a "
                f"{self._job_peak / GIB:.2f} GiB peak: the figure the Method page and the "
                f"Train page's gauges show.)"))
