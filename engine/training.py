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
from pathlib import Path
from typing import Any

from engine import distributed, runs
from engine import events as ev
from engine.config import JobConfig
from engine.errors import UserError
from engine.models import Precision


@dataclass
class RunResult:
    status: str  # completed | stopped | failed
    run_dir: Path
    output_path: Path | None
    step: int
    final_loss: float | None


# --------------------------------------------------------------------------- setup


def _optim_name(name: str) -> str:
    return {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
            "paged_adamw_8bit": "paged_adamw_8bit"}[name]


def training_arguments(job: JobConfig, run_dir: Path, device: str, precision: Precision,
                       has_eval: bool, train_sequences: int) -> Any:
    from transformers import TrainingArguments

    t = job.training
    args = TrainingArguments(
        output_dir=str(run_dir / runs.CHECKPOINTS),
        max_steps=t.max_steps, num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm or 0.0,
        optim=_optim_name(t.optimizer), bf16=precision.bf16, fp16=precision.fp16,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no", save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit, logging_steps=t.logging_steps,
        logging_nan_inf_filter=False, seed=t.seed, data_seed=t.seed,
        use_cpu=device == "cpu", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False,
        include_num_input_tokens_seen="all", **distributed_arguments(job, device))
    # A whole number of steps: transformers reads a float below 1 as a ratio but 1.0 as one
    # step, so passing the ratio itself would turn warmup_ratio 1.0 into a single warm-up step.
    args.warmup_steps = warmup_steps(t.warmup_ratio, planned_steps(args, train_sequences))
    return args


def distributed_arguments(job: JobConfig, device: str) -> dict[str, Any]:
    """TrainingArguments for several ranks (none alone): gloo on the CPU, nccl on CUDA, and
    FSDP when asked (``use_orig_params`` lets LoRA's frozen and trained weights share a
    shard)."""
    if distributed.world().size < 2:
        return {}
    out: dict[str, Any] = {"ddp_backend": "nccl" if device == "cuda" else "gloo"}
    if job.training.fsdp == "full_shard" and device == "cuda":  # accelerate shards GPUs only
        out["fsdp"] = "full_shard auto_wrap"
        out["fsdp_config"] = {"use_orig_params": True,
                              "activation_checkpointing": job.training.gradient_checkpointing}
    return out


def check_fsdp(job: JobConfig, spec: Any) -> None:
    """FSDP shards plain tensors; bitsandbytes' packed 4-bit weights are not."""
    if job.training.fsdp != "off" and spec.quantized_base:
        from engine.errors import ConfigError

        raise ConfigError("training.fsdp", f"{job.training.fsdp} cannot shard method "
                          f"{spec.name}'s 4-bit base: bitsandbytes' packed 4-bit weights are "
                          "not plain tensors FSDP can split (each rank would still hold the "
                          "whole base)", "set training.fsdp: off (QLoRA runs data-parallel, "
                          "one 4-bit base per GPU), or use method lora with fsdp: full_shard")


def planned_steps(args: Any, train_sequences: int) -> int:
    """Optimizer steps the Trainer will take (the same count its scheduler is built for)."""
    if args.max_steps > 0:
        return int(args.max_steps)
    per_epoch = math.ceil(train_sequences / (args.per_device_train_batch_size
                                             * args.gradient_accumulation_steps
                                             * max(1, args.world_size)))
    return math.ceil(per_epoch * args.num_train_epochs)


def warmup_steps(ratio: float, steps: int) -> int:
    return math.ceil(ratio * steps)


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
        on_saving: Callable[[int], None] | None = None  # before a checkpoint is written
        # Called (state, control, what) when a step's loss or gradient norm is NaN/inf.
        on_non_finite: Callable[[Any, Any, str], None] | None = None
        lean_loss = False
        offload: Any = None  # an engine._offload.OffloadActivations, or None
        _tokens: TokenCounter | None = None
        _bad: Any = None  # device flag: a step since the last check was non-finite

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            counts = inputs.pop(TOKEN_COUNTS, None)
            if model.training:
                if self._tokens is None:
                    self._tokens = TokenCounter()
                self._tokens.add(inputs, counts)
            if model.training and self.offload is not None:  # engine._offload
                with self.offload:
                    return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool,
                          num_items_in_batch: Any) -> Any:
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

        def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, model: Any,
                                     *args: Any, **kwargs: Any) -> None:
            # Every optimizer step passes here with the loss summed since the last log line
            # and its own gradient norm. Both are folded into a device flag (no sync), read
            # (one sync) before anything is logged, evaluated or saved: a non-finite step never
            # reaches a checkpoint or the result, whatever logging_steps is.
            self._fold_finite(tr_loss, grad_norm)
            c = self.control
            due = (c.should_log or c.should_save or c.should_evaluate or c.should_training_stop
                   or self.state.global_step >= self.state.max_steps)
            # The ranks agree (a rank-local NaN loss would otherwise stop one rank alone).
            if not (due and distributed.agree(bool(self._bad.any()))):
                super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, *args, **kwargs)
                return
            c.should_save = c.should_evaluate = False
            c.should_training_stop = True
            c.should_log = True  # show the loss that went wrong
            super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, *args, **kwargs)
            c.should_save = False
            loss_bad, grad_bad = (bool(x) for x in self._bad.tolist())
            what = " and ".join(w for w, b in (("the loss", loss_bad),
                                               ("the gradient norm", grad_bad)) if b)
            if self.on_non_finite is not None:
                self.on_non_finite(self.state, c, what)

        def _fold_finite(self, tr_loss: Any, grad_norm: Any) -> None:
            import torch

            loss = tr_loss.detach().float().reshape(())
            grad = torch.as_tensor(0.0 if grad_norm is None else grad_norm, device=loss.device)
            bad = ~torch.isfinite(torch.stack([loss, grad.float().reshape(())]))
            self._bad = bad if self._bad is None else self._bad | bad

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # the last line of defence: never write NaNs (FSDP: each rank sees its shard)
            if distributed.agree(not _trainable_finite(model)):
                self.control.should_training_stop = True
                if self.on_non_finite is not None:
                    self.on_non_finite(self.state, self.control, "a trained weight")
                return
            if self.on_saving is not None:
                self.on_saving(self.state.global_step)
            final_root = Path(self.args.output_dir)
            staging = final_root / ".staging"
            # Several ranks write into the same staging folder (each its own RNG file, rank 0
            # the rest): rank 0 alone clears it before and renames it after, each behind a
            # barrier, so no rank deletes a file another is writing or has just renamed.
            main = self.args.process_index == 0
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            distributed.barrier()
            self._staging_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
                distributed.barrier()
            except Exception as exc:
                # The previous checkpoints stay as they were; the partial one goes (on a full
                # disk it would keep the disk full).
                written = runs.folder_size(staging)
                shutil.rmtree(staging, ignore_errors=True)
                if runs.is_disk_full(exc):
                    previous = runs.last_checkpoint(final_root.parent)
                    needed = max(written, runs.folder_size(previous) if previous else 0)
                    raise runs.disk_full(final_root, needed) from exc
                raise
            finally:
                self._staging_dir = None
            name = runs.checkpoint_name(self.state.global_step)
            target = final_root / name
            if main:
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging / name, target)
                shutil.rmtree(staging, ignore_errors=True)
                self._rotate(final_root)
            distributed.barrier()
            if self.on_checkpoint is not None and main:
                self.on_checkpoint(target, self.state.global_step)

        def _get_output_dir(self, trial: Any) -> str:
            staging = getattr(self, "_staging_dir", None)
            return staging or super()._get_output_dir(trial)

        def _rotate(self, root: Path) -> None:
            limit = self.args.save_total_limit
            done = runs.checkpoints(root.parent, complete=False)
            for old in done[: max(0, len(done) - (limit or len(done)))]:
                shutil.rmtree(old, ignore_errors=True)

    return AtomicCheckpointTrainer


def _trainable_finite(model: Any) -> bool:
    """True when every trained parameter is finite (one sync for the whole model)."""
    import torch

    flags = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.requires_grad]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


# --------------------------------------------------------------------------- the run


def check_inputs(job: JobConfig) -> None:
    """The job's model and dataset paths exist: checked in milliseconds, before a run folder
    is made or a model loads (a missing path used to surface only after the model loaded)."""
    from engine.data import check_dataset_source
    from engine.models import check_model_source

    check_model_source(job.model.source)
    check_dataset_source(job.dataset.path)


def run_training(job: JobConfig, *, run_dir: Path, emit: ev.EventSink,
                 should_stop: Callable[[], bool] | None = None, resume: bool = False,
                 job_file: str | Path | None = None) -> RunResult:
    """Run ``job`` in ``run_dir``; every outcome ends with a ``run_finished`` event.

    ``job_file`` is the file ``job`` was read from; when it is the run's own job file it is
    left as it is (otherwise the resolved job is written there).
    """
    from engine.diagnostics import with_diagnostics

    start = time.perf_counter()
    emit = with_diagnostics(emit)  # divergence / overfitting warnings, as the GUI shows them
    should_stop = should_stop or (lambda: (run_dir / runs.STOP_FILE).exists())
    trainer: list[Any] = []  # set once built: the step a failure happened at
    step = lambda: trainer[0].state.global_step if trainer else 0  # noqa: E731
    try:
        try:
            if distributed.world().main:  # one writer: the ranks share the run folder
                runs.write_job(run_dir, job, source=job_file)
            check_inputs(job)
            result = _train(job, run_dir, emit, should_stop, resume, trainer)
        except OSError as exc:
            if runs.is_disk_full(exc):
                raise runs.disk_full(run_dir) from exc
            raise
    except UserError as exc:
        _report_failure(emit, ev.Error(code=exc.code, message=exc.full_message,
                                       advice=exc.advice, rank=_rank_tag()), step(), start)
        raise
    except Exception as exc:
        code, advice = _crash_advice(exc)
        if distributed.world().main:  # often a peer's failure broke a collective: its first
            for peer in distributed.peer_errors(run_dir):
                _report_failure(emit, peer, None, start)
        _report_failure(emit, ev.Error(code=code, message=f"{type(exc).__name__}: {exc}"[:2000],
                                       advice=advice, rank=_rank_tag()), step(), start)
        raise
    emit(ev.RunFinished(status=result.status, step=result.step, final_loss=result.final_loss,
                        output_path=str(result.output_path or ""),
                        elapsed_s=round(time.perf_counter() - start, 2)))
    return result


def _report_failure(emit: ev.EventSink, error: ev.Error, step: int | None,
                    start: float) -> None:
    """The error and ``run_finished`` events (none when ``step`` is None); on a full disk the
    events file may refuse them (they are still shown), and the error that caused it is the
    one to raise."""
    try:
        emit(error)
        if step is not None:
            emit(ev.RunFinished(status="failed", step=step,
                                elapsed_s=round(time.perf_counter() - start, 2)))
    except OSError:
        pass


def _rank_tag() -> int | None:
    """The rank an error came from, in a run on several devices."""
    w = distributed.world()
    return w.rank if w.size > 1 else None


def _crash_advice(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    if "out of memory" in text.lower():
        return ("cuda_oom", "lower training.batch_size (raise grad_accum to keep the effective "
                "batch), turn on training.gradient_checkpointing, shorten dataset.max_length, "
                "or switch to method qlora; `python -m engine advise` shows what fits")
    return ("crash", "this is a bug or an environment problem; the run folder keeps the last "
            "checkpoint, and --resume continues from it")


@dataclass
class _Run:
    """Everything setup builds for one run."""

    spec: Any  # engine.methods.MethodSpec
    device: str
    config: Any  # the base model's transformers config
    tokenizer: Any
    data: Any  # engine.data's prepared sequences (or the classify task's)
    task: Any  # a non-sft task's setup (collator, metrics, extras), None for sft
    trainer: Any
    callback: Any  # engine._callback.EventCallback
    precision: Any  # engine.models.Precision


def _train(job: JobConfig, run_dir: Path, emit: ev.EventSink, should_stop: Callable[[], bool],
           resume: bool, built: list[Any]) -> RunResult:
    """setup → train → save, the torchtune recipe's shape."""
    if resume:  # on another device count: keep the effective batch, or say what changed
        changed = distributed.resume_batch(job, run_dir, distributed.world().size)
        if changed is not None:
            emit(changed)
    run = _setup(job, run_dir, emit, should_stop)
    built.append(run.trainer)
    if job.training.fsdp != "off" and not run.trainer.is_fsdp_enabled:
        emit(ev.Warning(code="fsdp_off", message=(
            f"training.fsdp: {job.training.fsdp} needs several CUDA GPUs (accelerate shards "
            f"only across GPUs); this run on {distributed.world().size} {run.device} "
            "process(es) keeps the whole model in each (data-parallel)")))
    resume_from = _resume_point(run_dir, emit) if resume else None
    emit(_run_started(job, run, run_dir))
    emit(ev.Progress(stage="first_step", current=0, total=1,
                     message="first step (the slowest: memory is set up, kernels warm up)"))
    planned = planned_steps(run.trainer.args, len(run.data.train))
    if resume_from is not None and (runs.checkpoint_step(resume_from) or 0) >= planned:
        # Training had finished (the final save failed, e.g. on a full disk): load the last
        # checkpoint and save the result; the Trainer would take one step past the end.
        run.trainer._load_from_checkpoint(str(resume_from))
        run.trainer.state.global_step = runs.checkpoint_step(resume_from) or 0
    else:
        run.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return _save(job, run, run_dir, emit)


# --------------------------------------------------------------------------- setup steps


def _setup(job: JobConfig, run_dir: Path, emit: ev.EventSink,
           should_stop: Callable[[], bool]) -> _Run:
    import torch

    from engine.methods import get_method
    from engine.models import (
        load_config,
        load_model_dir,
        load_tokenizer,
        pick_device,
        remote_code_warning,
        resolve_precision,
    )

    spec = get_method(job.method.name)
    check_fsdp(job, spec)
    device = pick_device(job.training.device)
    precision = resolve_precision(job.training.precision, device)
    if spec.quantized_base and device == "mps":
        raise UserError("method qlora needs bitsandbytes, which does not run on Apple MPS",
                        "use method lora, or training.device: cpu", code="bad_job")
    torch.manual_seed(job.training.seed)

    warning = remote_code_warning(job)
    if warning is not None:
        emit(warning)
    trust = job.model.trust_remote_code
    folder = load_model_dir(job.model.source, emit)
    config = load_config(folder, trust_remote_code=trust)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust)
    task, data = _setup_data(job, spec, tokenizer, config.model_type, emit)
    model = _setup_model(job, spec, folder, device, precision, task, emit)
    args = training_arguments(job, run_dir, device, precision, bool(data.eval), len(data.train))
    trainer, callback = _setup_trainer(job, args, model, tokenizer, data, task, device, emit,
                                       should_stop)
    return _Run(spec, device, config, tokenizer, data, task, trainer, callback, precision)


def _setup_data(job: JobConfig, spec: Any, tokenizer: Any, model_type: str,
                emit: ev.EventSink) -> tuple[Any, Any]:
    """(task setup or None, tokenized data); reports ``data_ready``."""
    from engine.data import prepare_sft
    from engine.models import cache_dir

    emit(ev.Progress(stage="tokenize", current=0, total=1, message="reading the dataset"))
    progress = lambda i, n: emit(ev.Progress(  # noqa: E731
        stage="tokenize", current=i, total=n, message="tokenizing"))
    task = _task_setup(job, spec, tokenizer)
    if task is not None:
        data = task.data
    else:
        data = prepare_sft(job, tokenizer, model_type=model_type,
                           cache=cache_dir() / "datasets", progress=progress,
                           allow_packing=spec.packs)
    emit(ev.DataReady(format=data.format, detected=data.detected, train_rows=data.train_rows,
                      eval_rows=data.eval_rows, sequences=len(data.train), packed=data.packed,
                      truncated=data.truncated, dropped=data.dropped,
                      trained_tokens=data.trained_tokens, max_length=job.dataset.max_length))
    return task, data


def _setup_model(job: JobConfig, spec: Any, folder: str, device: str, precision: Precision,
                 task: Any, emit: ev.EventSink) -> Any:
    """The base as the method needs it (4-bit for QLoRA), with the method applied."""
    from engine.models import load_base

    emit(ev.Progress(stage="load_model", current=0, total=1, message="loading the model"))
    model = load_base(job, folder, device, precision, spec.quantized_base,
                      task.model_kwargs if task else None)
    model.config.use_cache = False
    if job.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return spec.apply(model, job.method, job.task)


def _setup_trainer(job: JobConfig, args: Any, model: Any, tokenizer: Any, data: Any, task: Any,
                   device: str, emit: ev.EventSink,
                   should_stop: Callable[[], bool]) -> tuple[Any, Any]:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from engine._callback import EventCallback
    from engine._samples import sample_prompts_for
    from engine.methods import get_method

    def stop_asked() -> bool:  # asked after each step until it says yes (then no more)
        if not should_stop():
            return False
        emit(ev.Progress(stage="stopping", current=0, total=1,
                         message="stopping after this step: saving a checkpoint"))
        return True

    callback = EventCallback(emit, stop_asked, tokenizer=tokenizer,
                             sample_prompts=[] if task else sample_prompts_for(job, data),
                             sample_max_new_tokens=job.training.sample_max_new_tokens,
                             device=device)
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=ListDataset(data.train),
        eval_dataset=ListDataset(data.eval) if data.eval else None,
        data_collator=task.collator if task else Collator(tokenizer.pad_token_id, True),
        compute_metrics=task.compute_metrics if task else None, callbacks=[callback])
    trainer.on_checkpoint = lambda path, step: emit(ev.Checkpoint(step=step, path=str(path)))
    trainer.on_saving = lambda step: emit(ev.Progress(
        stage="checkpoint", current=0, total=1, message=f"saving the checkpoint of step {step}"))
    trainer.on_non_finite = callback.fail_non_finite
    trainer.lean_loss = job.task == "sft" and get_method(job.method.name).packs
    trainer.offload = _offload(job, device, emit)
    trainer.remove_callback(PrinterCallback)  # our events replace its prints on stdout
    trainer.remove_callback(ProgressCallback)
    _add_memory_check(trainer, job, emit)
    return trainer, callback


def _offload(job: JobConfig, device: str, emit: ev.EventSink) -> Any:
    """``training.activation_offloading`` as this device allows (auto asks the advisor)."""
    from engine._offload import OffloadActivations, offload_decision

    requested = job.training.activation_offloading
    needed = None
    if requested == "auto" and device == "cuda":
        try:
            from engine.advisor import offload_needed
        except ImportError:  # a build without the advisor: auto stays off
            offload_needed = None
        needed = offload_needed(job) if offload_needed is not None else None
    on, why = offload_decision(requested, device, needed=needed)
    if (on and requested == "auto") or (not on and requested == "on"):
        emit(ev.Warning(code="activation_offloading", message=why))
    return OffloadActivations() if on else None


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


def _resume_point(run_dir: Path, emit: ev.EventSink) -> Path:
    """The newest complete checkpoint with finite weights (a NaN one would fail again)."""
    newest = runs.last_checkpoint(run_dir)
    checkpoint = runs.last_checkpoint(run_dir, finite=True)
    if newest is not None and newest != checkpoint:
        emit(ev.Warning(code="non_finite_checkpoint",
                        message=f"{newest} holds NaN/inf or unreadable weights; resuming from "
                                f"{checkpoint or 'nothing'} instead"))
    if checkpoint is None:
        what = "complete checkpoint with finite weights" if newest else "complete checkpoint"
        raise UserError(f"--resume: {run_dir / runs.CHECKPOINTS} holds no {what}",
                        "start the run again without --resume", code="no_checkpoint")
    return checkpoint


def _run_started(job: JobConfig, run: _Run, run_dir: Path) -> ev.RunStarted:
    from engine.methods import count_parameters, is_4bit
    from engine.models import model_facts

    trainable, total = count_parameters(run.trainer.model)
    return ev.RunStarted(
        run_dir=str(run_dir), job=job.to_dict(), model=model_facts(run.config),
        method=job.method.name, trainable_params=trainable, total_params=total,
        quantized_4bit=is_4bit(run.trainer.model), device=run.device,
        max_steps=planned_steps(run.trainer.args, len(run.data.train)), pid=os.getpid(),
        precision=run.precision.name, precision_reason=run.precision.reason,
        diagnostics=True, fsdp="full_shard" if run.trainer.is_fsdp_enabled else "off",
        **_batch_facts(job))


def _batch_facts(job: JobConfig) -> dict[str, int]:
    t, n = job.training, distributed.world().size
    return {"devices": n, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
            "effective_batch": distributed.effective_batch(t.batch_size, t.grad_accum, n)}


def _add_memory_check(trainer: Any, job: JobConfig, emit: ev.EventSink) -> None:
    """The advisor's self-correction, when the advisor is part of this build."""
    try:
        from engine.advisor import MemoryCheckCallback
    except ImportError:
        return
    trainer.add_callback(MemoryCheckCallback(job, emit))


# --------------------------------------------------------------------------- save


def _save(job: JobConfig, run: _Run, run_dir: Path, emit: ev.EventSink) -> RunResult:
    """A last evaluation when the schedule did not end on one, then the trained result."""
    trainer, callback = run.trainer, run.callback
    step = trainer.state.global_step
    if callback.failed:
        return RunResult("failed", run_dir, None, step, None)
    if run.data.eval and not callback.stopped and (not job.training.eval_steps
                                                  or step % job.training.eval_steps):
        trainer.evaluate()
    status = "stopped" if callback.stopped else "completed"
    if trainer.is_fsdp_enabled:
        out = _save_sharded(run.spec, trainer, run.tokenizer, run_dir, emit)
        return RunResult(status, run_dir, out, step, callback.last_loss)
    if not distributed.world().main:  # rank 0 alone writes the result (the weights agree)
        distributed.barrier()
        return RunResult(status, run_dir, run_dir / run.spec.output_dir, step,
                         callback.last_loss)
    out = _save_result(run.spec, trainer.model, run.tokenizer, run_dir, emit,
                       run.task.write_extras if run.task else None)
    distributed.barrier()
    return RunResult(status, run_dir, out, step, callback.last_loss)


def _save_sharded(spec: Any, trainer: Any, tokenizer: Any, run_dir: Path,
                  emit: ev.EventSink) -> Path:
    """FSDP: gathering the full weights is collective, so every rank calls the Trainer's
    save (FULL_STATE_DICT, written by rank 0); rank 0 then renames the folder into place."""
    target = run_dir / spec.output_dir
    partial = run_dir / f".{spec.output_dir}.partial"
    main = distributed.world().main
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        emit(ev.Progress(stage="save", current=0, total=1, message=f"saving {target.name}/"))
    distributed.barrier()
    trainer.save_model(str(partial))
    distributed.barrier()
    if main:
        tokenizer.save_pretrained(partial)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
        emit(ev.Progress(stage="save", current=1, total=1, message=f"saved {target}"))
    distributed.barrier()
    return target


def _save_result(spec: Any, model: Any, tokenizer: Any, run_dir: Path,
                 emit: ev.EventSink, extras: Callable[[Path], None] | None = None) -> Path:
    """Write the adapter (or model) aside, then rename it into place."""
    target = run_dir / spec.output_dir
    partial = run_dir / f".{spec.output_dir}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    emit(ev.Progress(stage="save", current=0, total=1, message=f"saving {target.name}/"))
    try:
        spec.save(model, partial)
        tokenizer.save_pretrained(partial)
        if extras is not None:  # e.g. a classifier's label names
            extras(partial)
    except Exception as exc:
        written = runs.folder_size(partial)
        shutil.rmtree(partial, ignore_errors=True)  # a previous result stays as it was
        if runs.is_disk_full(exc):
            raise runs.disk_full(run_dir, written) from exc
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    emit(ev.Progress(stage="save", current=1, total=1, message=f"saved {target}"))
    return target
