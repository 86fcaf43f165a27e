"""Open a finished run folder and load what it trained: shared by export, evaluate and chat."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import runs
from engine.errors import UserError
from engine.events import EventSink


@dataclass(frozen=True)
class RunInfo:
    """A run folder and what is needed to rebuild its model."""

    run_dir: Path
    job: Any  # engine.config.JobConfig
    spec: Any  # engine.methods.MethodSpec
    result: Path  # adapter/ or model/ (or the last checkpoint when the run never finished)
    from_checkpoint: bool

    @property
    def method(self) -> str:
        return str(self.job.method.name)

    @property
    def is_full(self) -> bool:
        return self.method == "full"

    def base_folder(self, emit: EventSink | None = None) -> str:
        from engine.models import load_model_dir

        return load_model_dir(self.job.model.source, emit)

    def base_param_count(self) -> int:
        """Parameters of the base, read from its files' headers (no weights loaded)."""
        from engine.models import stored_param_count

        return stored_param_count(self.base_folder(), self.job.model.source)

    def merge_refusal(self) -> str | None:
        """Why this run cannot be merged, or None when it can."""
        if self.job.task != "sft":
            return (f"task {self.job.task} runs cannot be merged or converted yet; export the "
                    "adapter instead")
        if not self.spec.mergeable:
            return self.spec.why_not_mergeable or f"method {self.method} cannot be merged"
        return None


def open_run(run_dir: str | Path, *, need_result: bool = True) -> RunInfo:
    """Read the run's job file and find the trained result; UserError when there is none
    (unless ``need_result`` is False: chatting with the base works before training ends)."""
    from engine.config import load_job
    from engine.methods import METHODS

    run = Path(run_dir)
    if not (run / runs.JOB_FILE).is_file():
        raise UserError(f"{run} is not a run folder (it has no {runs.JOB_FILE})",
                        "pass a folder under runs/, e.g. runs/my-run-20250101-120000",
                        code="bad_run")
    job = load_job(run / runs.JOB_FILE)
    spec = METHODS.get(job.method.name)
    if spec is None:
        raise UserError(f"run {run} used method {job.method.name!r}, which this build lacks",
                        f"available: {', '.join(METHODS)}", code="bad_run")
    result = run / spec.output_dir
    if _has_weights(result):
        return RunInfo(run, job, spec, result, False)
    ckpt = runs.last_checkpoint(run)
    if ckpt is not None and _has_weights(ckpt):
        return RunInfo(run, job, spec, ckpt, True)
    if not need_result:
        return RunInfo(run, job, spec, result, False)
    raise UserError(f"run {run} has no trained result yet ({spec.output_dir}/ is missing and "
                    "there is no complete checkpoint)",
                    "wait for the run to finish, or resume it", code="bad_run")


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def pick_device(info: RunInfo) -> str:
    from engine.models import pick_device as _pick

    device = _pick(info.job.training.device)
    return "cpu" if device == "mps" and info.spec.quantized_base else device


def load_tokenizer(info: RunInfo) -> Any:
    """The tokenizer saved with the result (it carries the chat template training used)."""
    from transformers import AutoTokenizer

    from engine.data._tokenize import ensure_chat_template

    folder = info.result if (info.result / "tokenizer_config.json").is_file() else Path(
        info.base_folder())
    trust = {"trust_remote_code": True} if info.job.model.trust_remote_code else {}
    tok = AutoTokenizer.from_pretrained(folder, **trust)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    ensure_chat_template(tok)
    return tok


@dataclass
class LoadedPair:
    """The tuned model, and a way to run the base model: the adapter switched off, or a
    separately loaded model (full fine-tuning, or ``base_only``)."""

    tuned: Any | None
    base_model: Any | None
    device: str
    merged: bool = False  # the tuned model is the adapter folded into a copy of the base
    dtype: str = ""  # the weights' dtype the models compute in ("" = as loaded)
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        if self.base_model is not None:
            yield self.base_model
            return
        assert self.tuned is not None
        with self.tuned.disable_adapter():
            yield self.tuned

    @contextlib.contextmanager
    def use(self, which: str) -> Iterator[Any]:
        if which == "base":
            with self.base() as model:
                yield model
        else:
            if self.tuned is None:
                raise UserError("the tuned model is not loaded (--base-only)", code="bad_request")
            yield self.tuned


def load_pair(info: RunInfo, *, emit: EventSink | None = None, base_only: bool = False,
              device: str | None = None) -> LoadedPair:
    """Load the base as training did (4-bit for QLoRA) and attach the trained result."""
    from engine.models import load_base, remote_code_warning, resolve_precision

    warning = remote_code_warning(info.job)
    if warning is not None and emit is not None:
        emit(warning)
    device = device or pick_device(info)
    precision = resolve_precision(info.job.training.precision, device)
    folder = info.base_folder(emit)
    base = load_base(info.job, folder, device, precision, info.spec.quantized_base)
    base.eval()
    if base_only:
        return LoadedPair(None, base, device)
    if info.is_full:
        tuned = info.spec.load_trained(base, info.result).to(device).eval()
        return LoadedPair(tuned, base, device)
    tuned = info.spec.load_trained(base, info.result).eval()
    if info.spec.switchable and hasattr(tuned, "disable_adapter"):
        return LoadedPair(tuned, None, device)
    # Bottleneck adapters hook into the base itself, and prompt-learning methods change how
    # generate() builds its inputs: a second, untouched copy of the base is the safe "base".
    other = load_base(info.job, folder, device, precision, info.spec.quantized_base).eval()
    return LoadedPair(tuned, other, device)

