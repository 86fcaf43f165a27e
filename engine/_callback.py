"""The one TrainerCallback that turns the Trainer's progress into Tunesmith events."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from engine import events as ev
from engine.telemetry_mem import memory_snapshot

# The key under which the sft collator hands the trainer a batch's (real, trained) token counts.
TOKEN_COUNTS = "tunesmith_token_counts"


class TokenCounter:
    """Real and trained tokens since the last step event, summed on the device.

    *Real* tokens are the batch's sequences without their padding (packed or not), *trained*
    tokens are those with a label, after the causal shift (what the loss is averaged over).
    Counts stay device tensors until a log line reads them, so counting adds no sync per step.
    """

    def __init__(self) -> None:
        self._sum: Any = None

    def add(self, inputs: dict[str, Any], counts: Any) -> None:
        if counts is None:  # another collator (classify): real tokens from the attention mask
            mask = inputs.get("attention_mask")
            if mask is None:
                return
            counts = mask.sum().reshape(1)
        self._sum = counts if self._sum is None else self._sum + counts

    def take(self, accelerator: Any) -> dict[str, int]:
        """``real_tokens`` (and ``trained_tokens`` where known) since the last take."""
        if self._sum is None:
            return {}
        total = self._sum
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, reduction="sum")
        self._sum = None
        values = [int(v) for v in total.tolist()]  # the one sync, once per log line
        return dict(zip(("real_tokens", "trained_tokens"), values, strict=False))


class EventCallback(TrainerCallback):
    """on_log → Step/Eval, on_evaluate → Sample, on_step_end → honour Stop, guard NaN."""

    def __init__(self, emit: ev.EventSink, should_stop: Callable[[], bool], *,
                 tokenizer: Any, sample_prompts: list[str], sample_max_new_tokens: int,
                 device: str) -> None:
        self.emit = emit
        self.should_stop = should_stop
        self.tokenizer = tokenizer
        self.sample_prompts = sample_prompts
        self.sample_max_new_tokens = sample_max_new_tokens
        self.device = device
        self.stopped = False
        self.failed: str | None = None
        self.last_loss: float | None = None
        self._start = time.perf_counter()
        self._start_step = 0
        self._last_time = self._start
        self._last_tokens = 0

    # -- the training loop -------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._start = self._last_time = time.perf_counter()
        self._start_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self.stopped and self.should_stop():
            # Finish this step, write a checkpoint, leave the loop: resume picks up from here.
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kw: Any) -> None:
        logs = logs or {}
        if "eval_loss" in logs:
            metrics = {k.removeprefix("eval_"): v for k, v in logs.items()
                       if k.startswith("eval_") and k != "eval_loss"}
            self.emit(ev.Eval(step=state.global_step, eval_loss=float(logs["eval_loss"]),
                              metrics=metrics))
            return
        if "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.emit(self._step_event(state, loss, logs))
        if not math.isfinite(loss):
            self.fail_non_finite(state, control, f"the loss ({loss})")
        else:
            self.last_loss = loss

    def _step_event(self, state: Any, loss: float, logs: dict[str, Any]) -> ev.Step:
        now = time.perf_counter()
        tokens = logs.get("real_tokens")  # from TokenCounter; padding included only without it
        if tokens is None:
            tokens = state.num_input_tokens_seen - self._last_tokens
        rate = tokens / max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        elapsed = now - self._start
        done = state.global_step - self._start_step
        eta = elapsed / done * (state.max_steps - state.global_step) if done else None
        grad_norm = logs.get("grad_norm")
        return ev.Step(
            step=state.global_step, max_steps=state.max_steps, epoch=float(state.epoch or 0),
            loss=loss, learning_rate=float(logs.get("learning_rate", 0.0)),
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens_per_s=round(rate, 1), trained_tokens=logs.get("trained_tokens"),
            memory=memory_snapshot(self.device),
            elapsed_s=round(elapsed, 2), eta_s=None if eta is None else round(eta, 1))

    def fail_non_finite(self, state: Any, control: Any, what: str) -> None:
        """Stop without saving (reported once): a checkpoint of NaN weights is worse than none."""
        control.should_training_stop = True
        control.should_save = False
        if self.failed:
            return
        self.failed = "non_finite_loss"
        self.emit(ev.Error(
            code="non_finite_loss",
            message=f"{what} became NaN or infinite by step {state.global_step}; no checkpoint "
                    "of it was written",
            advice="lower training.learning_rate (e.g. by 10×), or use training.precision: "
                   "bf16 or fp32 instead of fp16; resume from the last checkpoint"))

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.failed:
            control.should_save = False

    # -- evaluation samples ------------------------------------------------------------------

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kw: Any) -> None:
        if model is None or not self.sample_prompts:
            return
        for prompt, text in generate_samples(model, self.tokenizer, self.sample_prompts,
                                             self.sample_max_new_tokens):
            self.emit(ev.Sample(step=state.global_step, prompt=prompt, text=text))


def generate_samples(model: Any, tokenizer: Any, prompts: list[str],
                     max_new_tokens: int) -> list[tuple[str, str]]:
    """Greedy answers to ``prompts`` with the chat template (the model is left as it was)."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    try:
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False,
                add_generation_prompt=True)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:],
                                      skip_special_tokens=True)
            out.append((prompt, answer.strip()))
    finally:
        model.train(was_training)
    return out

