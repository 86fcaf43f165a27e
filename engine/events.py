"""Events a run reports, one JSON object a line, field ``type`` first.

Each event is a frozen dataclass; its JSON form is its fields. Readers (the CLI progress bar,
the GUI's reader thread, users' scripts) rebuild them with :func:`from_json`. Unknown fields
from a newer engine are ignored, unknown types become :class:`Unknown`, so an old reader never
crashes on a new run folder.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


def _now() -> float:
    return round(time.time(), 3)


@dataclass(frozen=True, kw_only=True)
class RunStarted:
    type: str = "run_started"
    time: float = field(default_factory=_now)
    run_dir: str = ""
    job: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    trainable_params: int = 0
    total_params: int = 0
    quantized_4bit: bool = False
    device: str = "cpu"
    max_steps: int = 0
    pid: int = 0
    precision: str = ""  # fp32 | bf16 | fp16, as training runs
    precision_reason: str = ""  # why (e.g. "auto: the CPU has native bf16 (...)")
    diagnostics: bool = False  # the engine emits the trend warnings (engine.diagnostics) itself
    devices: int = 1  # training processes (one device each)
    batch_size: int = 0  # micro-batch per device
    grad_accum: int = 0
    effective_batch: int = 0  # batch_size × grad_accum × devices: samples per optimizer step
    fsdp: str = "off"  # off (DDP, or one device) | full_shard (weights sharded across them)


# Every progress ``stage`` the engine reports, with the words a user reads for it.
STAGES = {
    "convert_model": "converting the model",
    "load_model": "loading the model",
    "tokenize": "tokenizing",
    "first_step": "first step",
    "stopping": "stopping after this step",
    "checkpoint": "saving a checkpoint",
    "save": "saving the result",
    "evaluate": "evaluating",
    "export": "exporting",  # its messages name the part: merging, writing GGUF, …
    "compare": "comparing methods",
}


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A wait longer than a second, ``stage`` one of :data:`STAGES`: model conversion, loading,
    tokenization, the first step, stopping, saving a checkpoint or the result, exporting."""

    type: str = "progress"
    time: float = field(default_factory=_now)
    stage: str = ""
    current: int = 0
    total: int = 0
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class DataReady:
    type: str = "data_ready"
    time: float = field(default_factory=_now)
    format: str = ""
    detected: bool = True
    train_rows: int = 0
    eval_rows: int = 0
    sequences: int = 0
    packed: bool = False
    truncated: int = 0
    dropped: int = 0
    trained_tokens: int = 0
    max_length: int = 0


@dataclass(frozen=True, kw_only=True)
class Step:
    type: str = "step"
    time: float = field(default_factory=_now)
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    loss: float = 0.0
    learning_rate: float = 0.0
    grad_norm: float | None = None
    # Real (non-pad) tokens per second since the previous step event.
    tokens_per_s: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    # Tokens the loss learned from (labels other than -100, after the causal shift) since the
    # previous step event; None where the task has no token labels (classify).
    trained_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class Eval:
    type: str = "eval"
    time: float = field(default_factory=_now)
    step: int = 0
    eval_loss: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Sample:
    type: str = "sample"
    time: float = field(default_factory=_now)
    step: int = 0
    prompt: str = ""
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    type: str = "checkpoint"
    time: float = field(default_factory=_now)
    step: int = 0
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class Warning:
    type: str = "warning"
    time: float = field(default_factory=_now)
    code: str = ""
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class Error:
    type: str = "error"
    time: float = field(default_factory=_now)
    code: str = ""
    message: str = ""
    advice: str = ""
    rank: int | None = None  # the training process that failed, in a run on several devices


@dataclass(frozen=True, kw_only=True)
class RunFinished:
    type: str = "run_finished"
    time: float = field(default_factory=_now)
    status: str = "completed"  # completed | stopped | failed
    step: int = 0
    final_loss: float | None = None
    output_path: str = ""
    elapsed_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Exported:
    """One finished export: an adapter folder, a merged model folder, or a GGUF file.

    ``max_logit_diff`` is the largest absolute logit difference found by the export's check
    (merged vs base+adapter in fp32, or GGUF vs merged), ``None`` where nothing was compared.
    """

    type: str = "exported"
    time: float = field(default_factory=_now)
    path: str = ""
    kind: str = "adapter"  # adapter | merged | gguf
    max_logit_diff: float | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MethodCompared:
    """``python -m engine compare``: a method started (``running``) or ended (``completed``,
    ``stopped``, ``failed``, ``skipped``); ``row`` is its line of the comparison table."""

    type: str = "method_compared"
    time: float = field(default_factory=_now)
    method: str = ""
    index: int = 0
    total: int = 0
    status: str = "running"
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Unknown:
    """An event of a type this reader does not know (written by a newer engine)."""

    type: str = "unknown"
    time: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


Event = (
    RunStarted | Progress | DataReady | Step | Eval | Sample | Checkpoint | Warning | Error
    | RunFinished | Exported | MethodCompared | Unknown
)
EventSink = Callable[[Event], None]

EVENT_TYPES: dict[str, type] = {
    cls.type: cls  # type: ignore[attr-defined]
    for cls in (RunStarted, Progress, DataReady, Step, Eval, Sample, Checkpoint, Warning, Error,
                RunFinished, Exported, MethodCompared)
}


def to_json(event: Event) -> str:
    """One line of JSON, ``type`` first (dataclass field order)."""
    return json.dumps(dataclasses.asdict(event), ensure_ascii=False, allow_nan=True)


def from_json(line: str | dict[str, Any]) -> Event:
    """The event of a JSON line or object; ValueError when a known event's field has the
    wrong type (``"step": "x"``), so that no reader meets a malformed event later."""
    data = json.loads(line) if isinstance(line, str) else line
    kind = data.get("type", "")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return Unknown(type=str(data.get("type", "unknown")), time=_number(data.get("time")),
                       data=data)
    fields = {k: v for k, v in data.items() if k in _field_types(cls)}
    for name, value in fields.items():
        if not _fits(value, _field_types(cls)[name]):
            raise ValueError(f"{kind} event: field {name!r} is {value!r}")
    return cls(**fields)  # type: ignore[no-any-return]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


_TYPES: dict[type, dict[str, str]] = {}


def _field_types(cls: type) -> dict[str, str]:
    """Each field's annotation, as written (``from __future__ import annotations``)."""
    if cls not in _TYPES:
        _TYPES[cls] = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return _TYPES[cls]


def _fits(value: Any, annotation: str) -> bool:
    options = [a.strip() for a in annotation.split("|")]
    for option in options:
        if option == "None" and value is None:
            return True
        base = option.split("[")[0]
        if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        wanted = {"str": str, "bool": bool, "dict": dict, "list": list}.get(base)
        if wanted is not None and isinstance(value, wanted):
            return True
        if base == "Any":
            return True
    return False


def json_line(line: str) -> dict[str, Any] | None:
    """The JSON object with a ``type`` on a line of a child's output, or None for other text."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("type"), str)
    return data if ok else None


def parse_line(text: str) -> Event | None:
    """The event on a line, or None when the line is not a well-formed JSON event (skipped)."""
    data = json_line(text)
    if data is None:
        return None
    try:
        return from_json(data)
    except ValueError:
        return None


class EventWriter:
    """An EventSink that appends to a run's events file and optionally echoes to a stream."""

    def __init__(self, path: str | Path, echo: TextIO | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._echo = echo
        self._listeners: list[EventSink] = []

    def add_listener(self, sink: EventSink) -> None:
        self._listeners.append(sink)

    def __call__(self, event: Event) -> None:
        line = to_json(event) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        finally:  # a failed write (a full disk) is still shown, then raised
            if self._echo is not None:
                self._echo.write(line)
                self._echo.flush()
            for sink in self._listeners:
                sink(event)

    def close(self) -> None:
        self._fh.close()


class JsonLineSink:
    """An EventSink that writes each event as one JSON line on ``stream`` (thread-safe)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.stream.write(to_json(event) + "\n")
            self.stream.flush()


def write_result(out: Any, data: Any, *, as_json: bool, quiet: bool,
                 format_text: Callable[[Any], str]) -> int:
    """A verb's final answer on ``out``: JSON with --json, else the table (none when the
    events go to stdout); exit code 0."""
    if as_json:
        out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif not quiet:
        out.write(format_text(data) + "\n")
    return 0
