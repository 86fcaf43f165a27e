"""The job file: dataclasses with help text and validation, loaded from and saved to YAML.

Every key has a default and a ``help`` (the GUI's tooltips come from it). Unknown keys and bad
values raise :class:`~engine.errors.ConfigError` naming the key, e.g. ``training.batch_size``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError, UserError
from engine.methods import METHODS

TASKS = ("sft", "classify")
FORMATS = ("auto", "alpaca", "sharegpt", "messages", "text", "prompt_completion",
           "classification")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _check_choices(obj: Any, section: str = "") -> None:
    """Check every field of ``obj`` that lists ``choices`` in its metadata, naming the key,
    and that every number is finite (YAML reads ``.nan`` and ``.inf`` as floats, and a NaN
    passes every range comparison)."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}" if section else f.name
        if choices is not None and value not in choices:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"{value!r} is not a finite number")


def _check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                 *, lo_open: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(key, f"{value!r} is not a finite number")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(key, f"{value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(key, f"{value!r} must be <= {hi}")


@dataclass
class ModelConfig:
    source: str = field(default="smollm2-135m-instruct", metadata=_help(
        "A built-in default (smollm2-135m-instruct, minilm-l6), a hub id, a local model folder "
        "or a .gguf file."))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "Run Python code that ships with a hub model. Only for models you trust."))
    attn_implementation: str = field(default="sdpa", metadata=_help(
        "Attention kernel: sdpa (PyTorch), eager, or flash_attention_2 when installed.",
        choices=("sdpa", "eager", "flash_attention_2")))

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ConfigError("model.source", "is empty", "name a default, hub id, folder or .gguf")
        _check_choices(self, "model")


@dataclass
class DatasetConfig:
    path: str = field(default="", metadata=_help(
        "A JSON/JSONL/CSV/Parquet/TXT file, a folder of them, or a hub dataset id."))
    format: str = field(default="auto", metadata=_help(
        "How rows are laid out; auto detects it and says what it found.", choices=FORMATS))
    max_length: int = field(default=512, metadata=_help(
        "Longest sequence in tokens; longer samples are truncated or dropped (see overflow)."))
    overflow: str = field(default="truncate", metadata=_help(
        "What to do with samples longer than max_length: truncate or drop.",
        choices=("truncate", "drop")))
    packing: str = field(default="auto", metadata=_help(
        "Pack short samples into full sequences: auto (on where exact), on, off.",
        choices=("auto", "on", "off")))
    eval_split: float = field(default=0.1, metadata=_help(
        "Share of rows held out for evaluation (0 for none), or a row count when >= 1."))
    split: str = field(default="train", metadata=_help("Split to read from a hub dataset."))
    text_column: str = field(default="", metadata=_help(
        "Column holding the text (text and classification formats); empty: detect."))
    label_column: str = field(default="", metadata=_help(
        "Column holding the label (classification); empty: detect."))
    system_prompt: str = field(default="", metadata=_help(
        "A system message put before every conversation that has none."))
    max_rows: int = field(default=0, metadata=_help("Use only the first N rows (0: all)."))

    def __post_init__(self) -> None:
        _check_choices(self, "dataset")
        _check_range("dataset.max_length", self.max_length, 8)
        _check_range("dataset.eval_split", self.eval_split, 0)
        _check_range("dataset.max_rows", self.max_rows, 0)


@dataclass
class MethodConfig:
    name: str = field(default="lora", metadata=_help(
        "How to fine-tune: lora (the default), qlora, full, ... (the methods of "
        "engine.methods; a wrong name lists them all).", choices=METHODS))
    r: int = field(default=16, metadata=_help("LoRA/DoRA/QLoRA rank: size of the update."))
    alpha: float = field(default=32, metadata=_help(
        "LoRA scaling; the update is multiplied by alpha / r."))
    dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input."))
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata=_help(
        "Layers that get LoRA: all-linear, or names such as q_proj, v_proj."))
    bottleneck_size: int = field(default=64, metadata=_help(
        "Bottleneck adapter: width of the down-projection."))
    num_virtual_tokens: int = field(default=20, metadata=_help(
        "Prefix / P-tuning v2 / prompt tuning: number of trainable virtual tokens."))
    prefix_projection: bool = field(default=False, metadata=_help(
        "Prefix tuning: reparameterise the prefix through an MLP (more stable, more memory)."))
    double_quant: bool = field(default=True, metadata=_help(
        "QLoRA: quantize the quantization constants too (saves ~0.4 bit per weight)."))
    adapter_dtype: str = field(default="fp32", metadata=_help(
        "LoRA/DoRA/QLoRA: dtype of the trained weights (and their gradients and AdamW states): "
        "fp32 (stable, peft's default) or compute (the base's compute dtype, e.g. bf16: half "
        "the bytes).", choices=("fp32", "compute")))

    def __post_init__(self) -> None:
        _check_choices(self, "method")
        _check_range("method.r", self.r, 1)
        _check_range("method.alpha", self.alpha, 0, lo_open=True)
        _check_range("method.dropout", self.dropout, 0, 0.9)
        _check_range("method.bottleneck_size", self.bottleneck_size, 1)
        _check_range("method.num_virtual_tokens", self.num_virtual_tokens, 1)
        if not self.target_modules:
            raise ConfigError("method.target_modules", "is empty", "use [all-linear]")


@dataclass
class TrainingConfig:
    max_steps: int = field(default=-1, metadata=_help(
        "Optimizer steps to run; -1 runs for `epochs`."))
    epochs: float = field(default=3.0, metadata=_help("Passes over the training data."))
    batch_size: int = field(default=4, metadata=_help("Samples per micro-batch on each device."))
    grad_accum: int = field(default=1, metadata=_help(
        "Micro-batches added up before each optimizer step (effective batch = both)."))
    learning_rate: float = field(default=2.0e-4, metadata=_help(
        "Peak learning rate. LoRA ~2e-4, full fine-tuning ~2e-5."))
    lr_scheduler: str = field(default="cosine", metadata=_help(
        "Learning-rate schedule after warm-up.", choices=("cosine", "linear", "constant")))
    warmup_ratio: float = field(default=0.05, metadata=_help("Share of steps spent warming up."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping (0: off)."))
    optimizer: str = field(default="adamw", metadata=_help(
        "adamw (32-bit), adamw_8bit or paged_adamw_8bit (bitsandbytes, GPU).",
        choices=("adamw", "adamw_8bit", "paged_adamw_8bit")))
    precision: str = field(default="auto", metadata=_help(
        "auto: bf16 where the GPU supports it, else fp16 on GPU; on the CPU bf16 autocast where "
        "it has native bf16 (AVX-512 BF16 or AMX), else fp32.",
        choices=PRECISIONS))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in the backward pass: much less memory, ~30% slower."))
    activation_offloading: str = field(default="auto", metadata=_help(
        "CUDA: keep the activations saved for backward in CPU memory (with checkpointing: "
        "each layer's input), slower. auto: on only when the advisor predicts the job fits "
        "the GPU just with it; ignored on the CPU.", choices=("auto", "on", "off")))
    eval_steps: int = field(default=0, metadata=_help(
        "Evaluate every N steps (0: at the end only)."))
    save_steps: int = field(default=0, metadata=_help(
        "Write a checkpoint every N steps (0: only when stopping and at the end)."))
    save_total_limit: int = field(default=3, metadata=_help("Checkpoints kept (oldest go)."))
    logging_steps: int = field(default=1, metadata=_help("Report the loss every N steps."))
    seed: int = field(default=42, metadata=_help("Random seed for data order and init."))
    device: str = field(default="auto", metadata=_help(
        "auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu.",
        choices=("auto", "cuda", "mps", "cpu")))
    devices: int = field(default=1, metadata=_help(
        "Training processes, one GPU each (data-parallel through torchrun); on a machine "
        "without GPUs, CPU processes. The effective batch is batch_size × grad_accum × devices. "
        "`--devices N` on the command line overrides it."))
    fsdp: str = field(default="off", metadata=_help(
        "off: each device holds the whole model (DDP); full_shard: shard weights, gradients "
        "and optimizer state across the devices (FSDP), for models bigger than one card. "
        "Not with qlora: bitsandbytes' 4-bit weights cannot be sharded.",
        choices=("off", "full_shard")))
    sample_prompts: list[str] = field(default_factory=list, metadata=_help(
        "Prompts answered at each evaluation so you can watch the model change."))
    sample_max_new_tokens: int = field(default=48, metadata=_help(
        "Length of the sample answers."))

    def __post_init__(self) -> None:
        _check_choices(self, "training")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("training.max_steps", f"{self.max_steps} must be -1 or >= 1")
        _check_range("training.epochs", self.epochs, 0, lo_open=True)
        _check_range("training.batch_size", self.batch_size, 1)
        _check_range("training.grad_accum", self.grad_accum, 1)
        _check_range("training.learning_rate", self.learning_rate, 0, 1, lo_open=True)
        _check_range("training.warmup_ratio", self.warmup_ratio, 0, 1)
        _check_range("training.weight_decay", self.weight_decay, 0)
        _check_range("training.max_grad_norm", self.max_grad_norm, 0)
        for key in ("eval_steps", "save_steps"):
            _check_range(f"training.{key}", getattr(self, key), 0)
        _check_range("training.save_total_limit", self.save_total_limit, 1)
        _check_range("training.logging_steps", self.logging_steps, 1)
        _check_range("training.sample_max_new_tokens", self.sample_max_new_tokens, 1)
        _check_range("training.seed", self.seed, 0, 2**32 - 1)  # numpy's seed range
        _check_range("training.devices", self.devices, 1, 64)


@dataclass
class OutputConfig:
    runs_dir: str = field(default="runs", metadata=_help(
        "Folder that holds one sub-folder per run.", folder=True))


@dataclass
class JobConfig:
    name: str = field(default="run", metadata=_help("Name of the run (its folder starts with it)."))
    task: str = field(default="sft", metadata=_help(
        "sft: teach a chat/completion model; classify: sequence classification.", choices=TASKS))
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _check_choices(self)
        if not self.name or any(c in self.name for c in '/\\:*?"<>|'):
            raise ConfigError("name", f"{self.name!r} cannot be a folder name",
                              "use letters, digits, - and _")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int where float is expected."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} is not a valid value")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping of keys, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected text, got {value!r}")
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            near = ", ".join(sorted(names))
            raise ConfigError(f"{prefix}{key}", "is not a known key", f"known keys here: {near}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: _coerce(f"{prefix}{k}", _on_off(v, fields[k]), hints[k])
              for k, v in data.items()}
    return cls(**kwargs)


def _on_off(value: Any, f: dataclasses.Field[Any]) -> Any:
    """YAML 1.1 reads an unquoted on/off (and yes/no) as true/false: for a choice that
    offers "on" and "off" (such as dataset.packing) take the boolean as the word."""
    choices = f.metadata.get("choices") or ()
    if isinstance(value, bool) and "on" in choices and "off" in choices:
        return "on" if value else "off"
    return value


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    if not isinstance(data, dict):
        raise ConfigError("job", "the job file must be a mapping of keys (YAML)")
    job: JobConfig = _build(JobConfig, data)
    return job


def load_job(path: str | Path) -> JobConfig:
    """Read a job file; paths inside it stay as written (relative to the working folder)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"job file {p} does not exist", "check the path", code="bad_job")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"job file {p} is not UTF-8 text (byte {exc.start}: "
                        f"{exc.object[exc.start:exc.start + 1]!r})",
                        "save it as UTF-8 (most editors offer it under 'Save with encoding')",
                        code="bad_job") from None
    except OSError as exc:
        raise UserError(f"job file {p} cannot be read: {exc.strerror or exc}",
                        "check its permissions", code="bad_job") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"job file {p} is not valid YAML{where}: "
                        f"{getattr(exc, 'problem', exc)}", code="bad_job") from None
    if data is None:
        raise UserError(f"job file {p} is empty", "start from resources/presets/", code="bad_job")
    try:
        return job_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.key, f"{exc.message.split(': ', 1)[-1]} (in {p})",
                          exc.advice) from None


def dump_job(job: JobConfig) -> str:
    return yaml.safe_dump(job.to_dict(), sort_keys=False, allow_unicode=True)


def save_job(job: JobConfig, path: str | Path) -> None:
    Path(path).write_text(dump_job(job), encoding="utf-8")


def field_help(section: str, name: str) -> str:
    """The help text of ``section.name`` (section '' for top-level keys), for tooltips."""
    cls = JobConfig if not section else typing.get_type_hints(JobConfig)[section]
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{section}.{name}")
