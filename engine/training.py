"""Run one fine-tuning job: setup → train → save → cleanup, reporting events throughout.

``run_training(job, run_dir=..., emit=..., should_stop=...)`` is the whole engine as a function;
the CLI, the GUI's child process and the tests all call it.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.config import JobConfig, dump_job
from engine.errors import UserError

CHECKPOINTS = "checkpoints"
STOP_FILE = "STOP"


@dataclass
class RunResult:
    status: str  # completed | stopped | failed
    run_dir: Path
    output_path: Path | None
    step: int
    final_loss: float | None


def new_run_dir(job: JobConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(job.output.runs_dir) / f"{job.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (partial ones are never renamed into place)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.name.startswith("checkpoint-")
            and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


# --------------------------------------------------------------------------- setup


@dataclass
class Precision:
    dtype: Any  # torch dtype the base weights load in
    bf16: bool
    fp16: bool
    name: str
    reason: str = ""  # why this precision (the run_started event says it)


def resolve_precision(requested: str, device: str) -> Precision:
    import torch

    from engine.hardware import cpu_native_bf16

    why = f"training.precision: {requested}"
    if requested == "auto":
        if device == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            why = f"auto: this GPU {'supports' if requested == 'bf16' else 'lacks'} bf16"
        elif device == "cpu" and cpu_native_bf16()[0]:
            requested, why = "bf16", f"auto: {cpu_native_bf16()[1]}"
        else:
            requested = "fp32"  # MPS and CPUs without native bf16: fp32 is exact and fast
            why = f"auto: {cpu_native_bf16()[1] if device == 'cpu' else 'fp32 on ' + device}"
    if device == "cpu" and requested == "fp16":
        raise UserError("training.precision fp16 is not supported on the CPU",
                        "set training.precision: auto, bf16 or fp32", code="bad_job")
    if device == "cpu" and requested == "bf16" and not cpu_native_bf16()[0]:
        raise UserError(f"training.precision bf16: {cpu_native_bf16()[1]}",
                        "set training.precision: auto or fp32", code="bad_job")
    if requested == "bf16":
        # On the CPU the weights stay fp32 masters and autocast runs the matmuls in bf16.
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        return Precision(dtype, True, False, "bf16", why)
    if requested == "fp16":
        # fp16 weights do not train stably; keep fp32 masters and autocast to fp16.
        return Precision(torch.float32, False, True, "fp16", why)
    return Precision(torch.float32, False, False, "fp32", why)


def load_base(job: JobConfig, folder: str, device: str, precision: Precision,
              quantized: bool, extra: dict[str, Any] | None = None) -> Any:
    """The base model for the job's task; ``extra`` goes to from_pretrained (e.g. labels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if job.task == "classify" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {**(extra or {}), "dtype": precision.dtype,
                              "trust_remote_code": job.model.trust_remote_code,
                              "attn_implementation": job.model.attn_implementation}
    if job.method.name == "full" and precision.bf16:
        kwargs["dtype"] = torch.float32  # full fine-tuning keeps fp32 master weights
    if quantized:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision.bf16 else torch.float32
        if precision.fp16:
            compute = torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=job.method.double_quant, bnb_4bit_compute_dtype=compute,
            # a new classifier head trains in full: it must stay a plain layer
            llm_int8_skip_modules=["classifier", "score"] if job.task == "classify" else None)
        kwargs["device_map"] = {"": device if device != "cuda" else 0}
    try:
        model = auto.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        need = ("a model with a sequence-classification head (BERT, Llama...)"
                if job.task == "classify" else "a causal language model")
        raise UserError(f"cannot load model {job.model.source!r}: {str(exc).splitlines()[0]}",
                        f"check model.source; task {job.task} needs {need}",
                        code="bad_model") from None
    if not quantized:
        model.to(device)
    return model


def _optim_name(name: str) -> str:
    return {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
            "paged_adamw_8bit": "paged_adamw_8bit"}[name]


def training_arguments(job: JobConfig, run_dir: Path, device: str, precision: Precision,
                       has_eval: bool) -> Any:
    from transformers import TrainingArguments

    t = job.training
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        max_steps=t.max_steps, num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm or 0.0,
        optim=_optim_name(t.optimizer), bf16=precision.bf16, fp16=precision.fp16,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no", save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit, logging_steps=t.logging_steps,
        logging_nan_inf_filter=False, seed=t.seed, data_seed=t.seed,
        use_cpu=device == "cpu", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False,
        include_num_input_tokens_seen="all")


class ListDataset:
    """Tokenized sequences as a map-style dataset."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


class Collator:
    """Pad a batch on the right; padding is masked by position, never by token id."""

    def __init__(self, pad_id: int, count_tokens: bool = False) -> None:
        self.pad_id = pad_id
        self.count_tokens = count_tokens  # hand the trainer (real, trained) token counts

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([r["input_ids"] + [self.pad_id] * (n - len(r["input_ids"]))
                                       for r in rows]),
            "labels": torch.tensor([r["labels"] + [-100] * (n - len(r["labels"]))
                                    for r in rows]),
        }
        if "position_ids" in rows[0]:
            # Packed: restarting positions give each sample (and the padding) its own block
            # of the causal mask, so no attention mask is passed.
            batch["position_ids"] = torch.tensor(
                [r["position_ids"] + list(range(n - len(r["position_ids"]))) for r in rows])
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows])
        if self.count_tokens:
            from engine._callback import TOKEN_COUNTS

            real = sum(len(r["input_ids"]) for r in rows)
            trained = sum(x != -100 for r in rows for x in r["labels"][1:])  # after the shift
            batch[TOKEN_COUNTS] = torch.tensor([real, trained])
        return batch


def make_trainer_class() -> type:
    from transformers import Trainer

    from engine._callback import TOKEN_COUNTS, TokenCounter
    from engine._loss import trainer_loss

    class AtomicCheckpointTrainer(Trainer):  # type: ignore[misc]
        """Writes each checkpoint into a staging folder, then renames it into place.

        With ``lean_loss`` (sft, token-by-token methods) the causal-LM loss is computed from
        the decoder's hidden states chunk by chunk (engine._loss), never the batch's logits.
        """

        on_checkpoint: Callable[[Path, int], None] | None = None
        lean_loss = False
        _tokens: TokenCounter | None = None

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            counts = inputs.pop(TOKEN_COUNTS, None)
            if model.training:
                if self._tokens is None:
                    self._tokens = TokenCounter()
                self._tokens.add(inputs, counts)
            # Evaluation reads outputs only for compute_metrics (classify): the loss is enough.
            if self.lean_loss and (not return_outputs or self.compute_metrics is None):
                loss = trainer_loss(self, model, inputs, num_items_in_batch)
                if loss is not None:
                    return (loss, {"loss": loss}) if return_outputs else loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._tokens is not None:
                logs.update(self._tokens.take(self.accelerator))
            super().log(logs, start_time)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            final_root = Path(self.args.output_dir)
            staging = final_root / ".staging"
            shutil.rmtree(staging, ignore_errors=True)
            self._staging_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            name = f"checkpoint-{self.state.global_step}"
            target = final_root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / name, target)
            shutil.rmtree(staging, ignore_errors=True)
            self._rotate(final_root)
            if self.on_checkpoint is not None:
                self.on_checkpoint(target, self.state.global_step)

        def _get_output_dir(self, trial: Any) -> str:
            staging = getattr(self, "_staging_dir", None)
            return staging or super()._get_output_dir(trial)

        def _rotate(self, root: Path) -> None:
            limit = self.args.save_total_limit
            done = sorted((p for p in root.glob("checkpoint-*") if p.name[11:].isdigit()),
                          key=lambda p: int(p.name[11:]))
            for old in done[: max(0, len(done) - (limit or len(done)))]:
                shutil.rmtree(old, ignore_errors=True)

    return AtomicCheckpointTrainer


# --------------------------------------------------------------------------- the run


def run_training(job: JobConfig, *, run_dir: Path, emit: ev.EventSink,
                 should_stop: Callable[[], bool] | None = None,
                 resume: bool = False) -> RunResult:
    """Run ``job`` in ``run_dir``; every outcome ends with a ``run_finished`` event."""
    start = time.perf_counter()
    should_stop = should_stop or (lambda: (run_dir / STOP_FILE).exists())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yaml").write_text(dump_job(job), encoding="utf-8")
    try:
        result = _train(job, run_dir, emit, should_stop, resume, start)
    except UserError as exc:
        emit(ev.Error(code=exc.code, message=exc.message, advice=exc.advice))
        emit(ev.RunFinished(status="failed", elapsed_s=round(time.perf_counter() - start, 2)))
        raise
    except Exception as exc:
        code, advice = _crash_advice(exc)
        emit(ev.Error(code=code, message=f"{type(exc).__name__}: {exc}"[:2000], advice=advice))
        emit(ev.RunFinished(status="failed", elapsed_s=round(time.perf_counter() - start, 2)))
        raise
    emit(ev.RunFinished(status=result.status, step=result.step, final_loss=result.final_loss,
                        output_path=str(result.output_path or ""),
                        elapsed_s=round(time.perf_counter() - start, 2)))
    return result


def _crash_advice(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    if "out of memory" in text.lower():
        return ("cuda_oom", "lower training.batch_size (raise grad_accum to keep the effective "
                "batch), turn on training.gradient_checkpointing, shorten dataset.max_length, "
                "or switch to method qlora; `python -m engine advise` shows what fits")
    return ("crash", "this is a bug or an environment problem; the run folder keeps the last "
            "checkpoint, and --resume continues from it")


def _train(job: JobConfig, run_dir: Path, emit: ev.EventSink, should_stop: Callable[[], bool],
           resume: bool, start: float) -> RunResult:
    import torch

    from engine._callback import EventCallback
    from engine.data import prepare_sft
    from engine.methods import count_parameters, get_method, is_4bit
    from engine.models import (
        cache_dir,
        load_config,
        load_model_dir,
        load_tokenizer,
        model_facts,
        pick_device,
    )

    spec = get_method(job.method.name)
    device = pick_device(job.training.device)
    precision = resolve_precision(job.training.precision, device)
    if spec.quantized_base and device == "mps":
        raise UserError("method qlora needs bitsandbytes, which does not run on Apple MPS",
                        "use method lora, or training.device: cpu", code="bad_job")
    torch.manual_seed(job.training.seed)

    folder = load_model_dir(job.model.source, emit)
    config = load_config(folder)
    tokenizer = load_tokenizer(folder)
    emit(ev.Progress(stage="tokenize", current=0, total=1, message="reading the dataset"))
    progress = lambda i, n: emit(ev.Progress(  # noqa: E731
        stage="tokenize", current=i, total=n, message="tokenizing"))
    task = _task_setup(job, spec, tokenizer)
    if task is not None:
        data = task.data
    else:
        data = prepare_sft(job, tokenizer, model_type=config.model_type,
                           cache=cache_dir() / "datasets", progress=progress,
                           allow_packing=spec.packs)
    emit(ev.DataReady(format=data.format, detected=data.detected, train_rows=data.train_rows,
                      eval_rows=data.eval_rows, sequences=len(data.train), packed=data.packed,
                      truncated=data.truncated, dropped=data.dropped,
                      trained_tokens=data.trained_tokens, max_length=job.dataset.max_length))

    emit(ev.Progress(stage="load_model", current=0, total=1, message="loading the model"))
    model = load_base(job, folder, device, precision, spec.quantized_base,
                      task.model_kwargs if task else None)
    model.config.use_cache = False
    if job.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = spec.apply(model, job.method, job.task)
    trainable, total = count_parameters(model)

    has_eval = bool(data.eval)
    args = training_arguments(job, run_dir, device, precision, has_eval)
    callback = EventCallback(emit, should_stop, tokenizer=tokenizer,
                             sample_prompts=[] if task else job.training.sample_prompts,
                             sample_max_new_tokens=job.training.sample_max_new_tokens,
                             device=device)
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=ListDataset(data.train),
        eval_dataset=ListDataset(data.eval) if has_eval else None,
        data_collator=task.collator if task else Collator(tokenizer.pad_token_id, True),
        compute_metrics=task.compute_metrics if task else None, callbacks=[callback])
    trainer.on_checkpoint = lambda path, step: emit(ev.Checkpoint(step=step, path=str(path)))
    trainer.lean_loss = job.task == "sft" and spec.packs
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # our events replace its prints on stdout
    trainer.remove_callback(ProgressCallback)
    _add_memory_check(trainer, job, emit)

    resume_from = None
    if resume:
        resume_from = last_checkpoint(run_dir)
        if resume_from is None:
            raise UserError(f"--resume: {run_dir / CHECKPOINTS} holds no complete checkpoint",
                            "start the run again without --resume", code="no_checkpoint")
    emit(ev.RunStarted(
        run_dir=str(run_dir), job=job.to_dict(), model=model_facts(config),
        method=job.method.name, trainable_params=trainable, total_params=total,
        quantized_4bit=is_4bit(model), device=device, max_steps=_planned_steps(trainer, data),
        pid=os.getpid(), precision=precision.name, precision_reason=precision.reason))

    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    if callback.failed:
        return RunResult("failed", run_dir, None, step, None)
    if has_eval and not callback.stopped and (not job.training.eval_steps
                                              or step % job.training.eval_steps):
        trainer.evaluate()
    status = "stopped" if callback.stopped else "completed"
    out = _save_result(spec, trainer.model, tokenizer, run_dir, emit,
                       task.write_extras if task else None)
    return RunResult(status, run_dir, out, step, callback.last_loss)


def _task_setup(job: JobConfig, spec: Any, tokenizer: Any) -> Any:
    """Data, collator and metrics of a non-sft task (None for sft, set up inline above)."""
    if job.task == "classify":
        from engine.classify import setup_classify

        return setup_classify(job, tokenizer)
    if job.dataset.packing == "on" and not spec.packs:
        from engine.errors import ConfigError

        raise ConfigError("dataset.packing", f"on is not exact with method {spec.name}: its "
                          "virtual tokens are not separated per packed sample",
                          "set dataset.packing: auto or off")
    return None


def _planned_steps(trainer: Any, data: Any) -> int:
    args = trainer.args
    if args.max_steps > 0:
        return int(args.max_steps)
    per_epoch = math.ceil(len(data.train) / (args.per_device_train_batch_size
                                             * args.gradient_accumulation_steps
                                             * max(1, args.world_size)))
    return math.ceil(per_epoch * args.num_train_epochs)


def _add_memory_check(trainer: Any, job: JobConfig, emit: ev.EventSink) -> None:
    """The advisor's self-correction, when the advisor is part of this build."""
    try:
        from engine.advisor import MemoryCheckCallback
    except ImportError:
        return
    trainer.add_callback(MemoryCheckCallback(job, emit))


def _save_result(spec: Any, model: Any, tokenizer: Any, run_dir: Path,
                 emit: ev.EventSink, extras: Callable[[Path], None] | None = None) -> Path:
    """Write the adapter (or model) aside, then rename it into place."""
    target = run_dir / spec.output_dir
    partial = run_dir / f".{spec.output_dir}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    emit(ev.Progress(stage="save", current=0, total=1, message=f"saving {target.name}/"))
    spec.save(model, partial)
    tokenizer.save_pretrained(partial)
    if extras is not None:  # e.g. a classifier's label names
        extras(partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    emit(ev.Progress(stage="save", current=1, total=1, message=f"saved {target}"))
    return target
