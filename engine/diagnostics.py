"""Run diagnostics: watch a run's events and say when it goes wrong, with what to do.

Pure Python and Qt-free, so the GUI, the CLI and users' scripts share one set of rules::

    diag = Diagnostics()
    for event in runs.run_events(run_dir):
        for warning in diag.feed(event):
            print(warning.code, warning.message)

The engine itself reports the hard failures (``Error(code="non_finite_loss")`` stops the run
without writing a checkpoint; ``Error(code="cuda_oom")``). :class:`Diagnostics` adds the soft
ones, which only a trend over many events reveals:

- ``divergence``: the training loss jumps above ``DIVERGENCE_FACTOR`` × its moving median, or
  climbs: the median of the last ``CLIMB_WINDOW`` losses is above where the run started and
  ``CLIMB_FACTOR`` × the lowest such median so far (a steady climb drags a moving median along,
  so the jump rule alone never fires);
- ``overfitting``: the eval loss rises for ``OVERFIT_EVALS`` evaluations in a row while the
  training loss falls -- stop and keep the best checkpoint.

:func:`oom_retry_settings` turns an out-of-memory failure into safer settings to retry with,
and :func:`keep_best_checkpoint` makes the best evaluated checkpoint the run's result.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections import deque
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import runs

DIVERGENCE_FACTOR = 3.0  # loss above this many times its moving median
DIVERGENCE_WINDOW = 20  # steps in the moving median
DIVERGENCE_MIN_STEPS = 5  # a median of fewer steps is noise
OVERFIT_EVALS = 3  # consecutive eval-loss rises
CLIMB_WINDOW = 5  # steps in the short median of the climb rule
CLIMB_FACTOR = 2.0  # short median above this many times its lowest value so far

ADVICE = {
    "non_finite_loss": "No checkpoint of the broken weights was saved. Lower the learning rate "
                       "(e.g. 10×) or use precision bf16/fp32 instead of fp16, then retry.",
    "divergence": "The learning rate is probably too high: stop, lower "
                  "training.learning_rate (or raise training.warmup_ratio) and restart.",
    "overfitting": "The model is memorising the training set. Stop and keep the checkpoint "
                   "with the lowest eval loss; next time train fewer steps or use more data.",
    "cuda_oom": "A smaller micro-batch with more gradient accumulation (same effective batch), "
                "gradient checkpointing or QLoRA needs less memory.",
}


class Diagnostics:
    """Fed every event of one run in order; returns the :class:`~engine.events.Warning` s due.

    Each warning code fires once per run (a second divergence after a recovery fires again).
    """

    def __init__(self, *, factor: float = DIVERGENCE_FACTOR, window: int = DIVERGENCE_WINDOW,
                 min_steps: int = DIVERGENCE_MIN_STEPS, overfit_evals: int = OVERFIT_EVALS) -> None:
        self.factor, self.min_steps, self.overfit_evals = factor, min_steps, overfit_evals
        self._losses: deque[float] = deque(maxlen=window)
        self._evals: list[tuple[int, float]] = []  # (step, eval_loss)
        self._train_at_eval: list[float] = []  # mean training loss since the previous eval
        self._since_eval: list[float] = []
        self._diverging = False
        self._overfit_warned = False
        self._recent: deque[float] = deque(maxlen=CLIMB_WINDOW)
        self._start_median: float | None = None
        self._lowest_median = math.inf
        self._climb_warned = False
        self._engine_warns = False  # the run's engine reports these warnings itself

    @property
    def best_eval(self) -> tuple[int, float] | None:
        """(step, eval_loss) of the lowest eval loss so far."""
        finite = [e for e in self._evals if math.isfinite(e[1])]
        return min(finite, key=lambda e: e[1]) if finite else None

    def feed(self, event: ev.Event) -> list[ev.Warning]:
        if isinstance(event, ev.RunStarted):
            self._engine_warns = event.diagnostics
            if not self._losses:
                self._evals.clear()
        if self._engine_warns:
            return []  # its warning events are in the stream already: no second copy
        if isinstance(event, ev.Step):
            return self._on_step(event)
        if isinstance(event, ev.Eval):
            return self._on_eval(event)
        return []

    def feed_all(self, events: Iterable[ev.Event]) -> list[ev.Warning]:
        return [w for e in events for w in self.feed(e)]

    # -- divergence ----------------------------------------------------------------------------

    def _on_step(self, step: ev.Step) -> list[ev.Warning]:
        loss = step.loss
        if not math.isfinite(loss):
            return []  # the engine reports it (Error non_finite_loss) and stops
        self._since_eval.append(loss)
        out: list[ev.Warning] = []
        if len(self._losses) >= self.min_steps:
            median = statistics.median(self._losses)
            above = median > 0 and loss > self.factor * median
            if above and not self._diverging:
                self._climb_warned = True  # one story: the climb rule need not say it again
                out.append(ev.Warning(
                    code="divergence", time=step.time,
                    message=f"step {step.step}: loss {loss:.4g} is {loss / median:.1f}× its "
                            f"moving median ({median:.4g}) — the run may be diverging"))
            self._diverging = above
        if not self._diverging:
            self._losses.append(loss)  # a spike does not drag the median up
        return out + self._climb(step)

    def _climb(self, step: ev.Step) -> list[ev.Warning]:
        self._recent.append(step.loss)
        if len(self._recent) < CLIMB_WINDOW or self._climb_warned or self._diverging:
            return []
        median = statistics.median(self._recent)
        if self._start_median is None:
            self._start_median = median
        self._lowest_median = min(self._lowest_median, median)
        if not (median > self._start_median and median > CLIMB_FACTOR * self._lowest_median):
            return []
        self._climb_warned = True
        return [ev.Warning(
            code="divergence", time=step.time,
            message=f"step {step.step}: the loss has climbed to {median:.4g} (median of the "
                    f"last {CLIMB_WINDOW} steps) from {self._lowest_median:.4g}, above where "
                    f"the run started ({self._start_median:.4g}) — the run is diverging")]

    # -- overfitting ---------------------------------------------------------------------------

    def _on_eval(self, e: ev.Eval) -> list[ev.Warning]:
        if self._evals and self._evals[-1][0] == e.step:
            return []  # the same evaluation reported twice (a final evaluate)
        self._evals.append((e.step, e.eval_loss))
        recent = self._since_eval or (self._train_at_eval[-1:] or [math.nan])
        self._train_at_eval.append(statistics.fmean(recent))
        self._since_eval = []
        n = self.overfit_evals
        if self._overfit_warned or len(self._evals) < n + 1:
            return []
        evals = [x for _, x in self._evals[-(n + 1):]]
        trains = self._train_at_eval[-(n + 1):]
        eval_rising = all(b > a for a, b in pairwise(evals))
        train_falling = trains[-1] < trains[0]
        if not (eval_rising and train_falling):
            return []
        self._overfit_warned = True
        best = self.best_eval
        where = f"; the best was {best[1]:.4g} at step {best[0]}" if best else ""
        return [ev.Warning(
            code="overfitting", time=e.time,
            message=f"eval loss rose {n} evaluations in a row ({evals[0]:.4g} → {evals[-1]:.4g}) "
                    f"while the training loss fell{where}")]


def with_diagnostics(emit: ev.EventSink) -> ev.EventSink:
    """A sink that passes each event on, then the warnings :class:`Diagnostics` derives from
    it: the engine's own events then carry them, so the CLI shows what the GUI shows."""
    diag = Diagnostics()

    def sink(event: ev.Event) -> None:
        emit(event)
        if not isinstance(event, ev.RunStarted):  # its diagnostics flag is for readers
            for warning in diag.feed(event):
                emit(warning)

    return sink


# --------------------------------------------------------------------------- actions


def oom_retry_settings(job: dict[str, Any], *, cuda: bool = True) -> dict[str, Any]:
    """Safer settings after an out-of-memory failure, as a partial job to merge.

    Halves the micro-batch and doubles gradient accumulation (the effective batch stays),
    turns gradient checkpointing on, and moves LoRA/DoRA to QLoRA on a GPU (what the
    advisor recommends first when memory is short); at micro-batch 1 it halves max_length.
    """
    training = job.get("training", {})
    method = job.get("method", {}).get("name", "lora")
    batch = int(training.get("batch_size", 4))
    accum = int(training.get("grad_accum", 1))
    out: dict[str, Any] = {"training": {"gradient_checkpointing": True}}
    if batch > 1:
        new_batch = max(1, batch // 2)
        out["training"]["batch_size"] = new_batch
        out["training"]["grad_accum"] = max(1, accum * batch // new_batch)
    if cuda and method in ("lora", "dora"):
        out["method"] = {"name": "qlora"}
    if batch == 1:  # nothing left to split: shorten the sequences instead
        length = int(job.get("dataset", {}).get("max_length", 512))
        out["dataset"] = {"max_length": max(64, length // 2)}
    return out


def advisor_retry_settings(job: dict[str, Any]) -> dict[str, Any] | None:
    """The advisor's recommendation for this GPU as a partial job, when it is safer than the
    settings that ran out of memory (smaller micro-batch, checkpointing or a 4-bit base);
    None without an advisor, a GPU or such a recommendation. Slow (builds the model on the
    meta device): call it off the GUI thread.
    """
    try:
        from engine.advisor import advise
    except ImportError:
        return None
    t, d = job.get("training", {}), job.get("dataset", {})
    batch, accum = int(t.get("batch_size", 4)), int(t.get("grad_accum", 1))
    ckpt, method = bool(t.get("gradient_checkpointing")), job.get("method", {}).get("name")
    try:
        advice = advise(str(job.get("model", {}).get("source", "")),
                        seq_len=int(d.get("max_length", 512)), batch_size=batch,
                        grad_accum=accum, optimizer=str(t.get("optimizer", "adamw")),
                        gradient_checkpointing=None)
    except Exception:  # unknown model, bad value, ...: the heuristic stands
        return None
    rec = advice.get("recommendation") or {}
    if advice.get("device") != "cuda" or not rec.get("method"):
        return None
    safer = (rec["batch_size"] < batch or (rec["gradient_checkpointing"] and not ckpt)
             or (rec["method"] == "qlora" and method != "qlora"))
    if not safer:
        return None
    out: dict[str, Any] = {"training": {"batch_size": rec["batch_size"],
                                        "grad_accum": rec["grad_accum"],
                                        "gradient_checkpointing": rec["gradient_checkpointing"]}}
    if rec["method"] != method:
        out["method"] = {"name": rec["method"]}
    if rec["seq_len"] < int(d.get("max_length", 512)):
        out["dataset"] = {"max_length": rec["seq_len"]}
    return out


def describe_settings(partial: dict[str, Any]) -> list[str]:
    """``section.key: value`` lines of a partial job, for a banner."""
    return [f"{section}.{key}: {_yaml_value(value)}" for section, keys in partial.items()
            for key, value in keys.items()]


def _yaml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def best_checkpoint(run_dir: str | Path, evals: Iterable[ev.Eval]) -> Path | None:
    """The kept checkpoint nearest to (at or before) the step with the lowest eval loss."""
    scored = [e for e in evals if math.isfinite(e.eval_loss)]
    if not scored:
        return None
    best_step = min(scored, key=lambda e: e.eval_loss).step
    at_or_before = [p for p in runs.checkpoints(run_dir)
                    if (runs.checkpoint_step(p) or 0) <= best_step]
    return at_or_before[-1] if at_or_before else None


def keep_best_checkpoint(run_dir: str | Path) -> Path | None:
    """Make the best evaluated checkpoint the run's result.

    Copies its adapter (or model) files over ``adapter/`` (or ``model/``) and records the
    choice in ``best_checkpoint.json``. Returns the checkpoint used, or None when there is none.
    """
    run_dir = Path(run_dir)
    events = runs.run_events(run_dir)
    best = best_checkpoint(run_dir, (e for e in events if isinstance(e, ev.Eval)))
    if best is None:
        return None
    is_adapter = (best / "adapter_config.json").exists()
    target = run_dir / (runs.ADAPTER_DIR if is_adapter else runs.MODEL_DIR)
    partial = run_dir / f".{target.name}.best"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for item in best.iterdir():
        if item.is_file() and not _is_trainer_state(item.name):
            shutil.copy2(item, partial / item.name)
    if target.exists():
        for item in target.iterdir():  # keep the tokenizer files the final save wrote
            if item.is_file() and not (partial / item.name).exists():
                shutil.copy2(item, partial / item.name)
        shutil.rmtree(target)
    partial.rename(target)
    step = runs.checkpoint_step(best)
    choice = json.dumps({"checkpoint": str(best), "step": step})
    (run_dir / runs.BEST_FILE).write_text(choice + "\n")
    return best


def _is_trainer_state(name: str) -> bool:
    return name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                    "training_args.bin") or name.startswith("rng_state")
