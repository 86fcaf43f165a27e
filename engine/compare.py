"""``python -m engine compare JOB.yaml``: the lesson's trade-off table, measured on your job.

Each chosen method trains the job's model on the job's data for the same number of optimizer
steps (so the same sequences: packing ``auto`` becomes ``off``, since prompt-learning methods
cannot pack) at the method's own suggested learning rate (``MethodSpec.suggested_lr``), each
in its own ``python -m engine train`` child so memory is measured cleanly. Then
``python -m engine evaluate --loss-only`` scores every result, and the base model, with one
function on one held-out split. A method that does not fit (the advisor says so) or fails
(its child exits non-zero) gets its reason in the table; the others go on.

```
<comparison>/
  comparison.json       COMPARISON_FILE: the table, the settings, the machine
  STOP                  present = stop the current method after its step, skip the rest
  runs/<method>/        each method's own run folder (job.yaml, events.jsonl, evaluation.json)
```

Quality relative to full fine-tuning is ``(base_loss - loss) / (base_loss - full_loss)``
from held-out losses: 1.0 is as much improvement over the base model as full fine-tuning
gives, 0 is none. Without a finished full run the reference is LoRA, and the table says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from engine import events as ev
from engine import runs
from engine.errors import UserError
from engine.launch import engine_command, python_command

COMPARISON_FILE = "comparison.json"
RUNS_SUBDIR = "runs"
DEFAULT_STEPS = 20  # when neither --steps nor the job's training.max_steps says
FORMAT_VERSION = 1
REFERENCES = ("full", "lora")  # quality is relative to the first of these that finished

# The course lesson's figures (DESIGN.md), shown beside the measured ones.
LESSON_CLAIMS: dict[str, dict[str, str]] = {
    "full": {"share": "100%", "quality": "100%", "verdict": "best quality, memory ≈ 3-4× model"},
    "adapter": {"share": "~3%", "quality": "", "verdict": "modular, one per task"},
    "lora": {"share": "~0.5%", "quality": "~95%", "verdict": "the default choice"},
    "prefix": {"share": "~0.1%", "quality": "~80%", "verdict": "for very tight memory"},
    "ptuning_v2": {"share": "~0.2%", "quality": "", "verdict": "prompt-style tasks"},
    "qlora": {"share": "~0.5%", "quality": "~92%", "verdict": "consumer GPUs, lowest memory"},
}

# Every field a method's row has (None where not measured): the table's columns.
ROW_FIELDS = ("method", "label", "status", "reason", "learning_rate", "steps",
              "trainable_params", "total_params", "trainable_share", "peak_memory_gb",
              "memory_kind", "tokens_per_s", "wall_s", "train_s", "eval_s", "final_train_loss",
              "held_out_loss", "perplexity", "base_loss", "quality", "run_dir")


# --------------------------------------------------------------------------- the settings


@dataclasses.dataclass
class Plan:
    job: Any  # engine.config.JobConfig, as read
    job_file: Path
    methods: list[str]
    steps: int
    out: Path


def _methods(arg: str | None, task: str) -> list[str]:
    from engine.methods import METHODS

    if task != "sft":
        raise UserError(f"compare needs task sft (the job says {task!r}): the comparison "
                        "scores held-out loss", "use a chat/completion job", code="bad_job")
    if not arg:
        return list(METHODS)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: {', '.join(unknown) or arg!r} not a method",
                        f"choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def make_plan(args: argparse.Namespace) -> Plan:
    from engine.config import load_job
    from engine.train_cli import _job_file

    job_file = _job_file(args.job)
    job = load_job(job_file)
    methods = _methods(args.methods, job.task)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps} must be 1 or more")
    steps = args.steps or (job.training.max_steps if job.training.max_steps > 0
                           else DEFAULT_STEPS)
    if args.out:
        out = Path(args.out)
        if (out / COMPARISON_FILE).exists():
            raise UserError(f"--out {out} already holds a comparison",
                            "pick a new folder, or open it with --show")
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = runs.create_run_dir(job.output.runs_dir, f"compare-{job.name}")
    return Plan(job, job_file, methods, steps, out)


def method_job(job: Any, method: str, steps: int) -> Any:
    """The job one method trains: same data and steps, the method's suggested rate, no
    checkpoints or samples between (they would cost time the table does not show)."""
    from engine.methods import get_method

    spec = get_method(method)
    packing = "off" if job.dataset.packing == "auto" else job.dataset.packing
    return dataclasses.replace(
        job, name=f"{job.name}-{method}",
        method=dataclasses.replace(job.method, name=method),
        dataset=dataclasses.replace(job.dataset, packing=packing),
        training=dataclasses.replace(job.training, max_steps=steps,
                                     learning_rate=spec.suggested_lr, eval_steps=0,
                                     save_steps=0, sample_prompts=[]))


# --------------------------------------------------------------------------- children


class _Child:
    """One engine child: its event lines as events, its stderr in a file, its peak RSS."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        self.start = time.perf_counter()
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL)

    def events(self) -> Any:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            event = ev.parse_line(raw.decode("utf-8", "replace"))
            if event is not None:
                yield event

    def wait(self) -> int:
        code = self.proc.wait()
        self.wall_s = time.perf_counter() - self.start
        return code

    def last_error_line(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        errors = [ln for ln in lines if ln.lower().startswith("error")]
        return (errors or [ln for ln in lines if ln.strip()] or [""])[-1].strip()


def library_baseline_gb() -> float | None:
    """Peak RSS of a child that only imports the training stack: the part of every CPU
    child's peak that no method causes (subtracted to give each method's growth)."""
    code = ("import engine.training, transformers, peft, torch;"
            "from engine.telemetry_mem import peak_rss_bytes; print(peak_rss_bytes())")
    try:
        out = subprocess.run(python_command(code), capture_output=True, text=True,
                             timeout=300, check=True).stdout
        return int(out.strip().splitlines()[-1]) / 1024**3
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


# --------------------------------------------------------------------------- one method


class Comparison:
    """Runs the plan, one method after another; ``emit`` gets progress and each row."""

    def __init__(self, plan: Plan, emit: ev.EventSink, should_stop: Any) -> None:
        self.plan = plan
        self.emit = emit
        self.should_stop = should_stop
        self.rows: list[dict[str, Any]] = []
        self.device = ""
        self.baseline_gb: float | None = None
        self.status = "completed"
        self._current: Path | None = None
        self._done = threading.Event()

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        watcher = threading.Thread(target=self._watch_stop, daemon=True)
        watcher.start()
        try:
            self._run_all()
        finally:
            self._done.set()
        return self.result(time.perf_counter() - start)

    def _run_all(self) -> None:
        fits = _advisor_fits(self.plan)
        for i, method in enumerate(self.plan.methods):
            if self.status == "stopped":
                row = blank_row(method, status="skipped", reason="the comparison was stopped")
            elif method in fits:
                row = blank_row(method, status="skipped", reason=fits[method])
            else:
                self._announce(i, method, "running", blank_row(method, status="running"))
                row = self._run_method(method)
            self.rows.append(row)
            self._announce(i, method, row["status"], row)

    def _announce(self, i: int, method: str, status: str, row: dict[str, Any]) -> None:
        self.emit(ev.MethodCompared(method=method, index=i, total=len(self.plan.methods),
                                    status=status, row=row))

    def _watch_stop(self) -> None:
        while not self._done.wait(0.3):
            if self.should_stop() and self.status != "stopped":
                self.status = "stopped"
                if self._current is not None:
                    (self._current / runs.STOP_FILE).touch()

    def _run_method(self, method: str) -> dict[str, Any]:
        from engine.config import save_job

        run_dir = self.plan.out / RUNS_SUBDIR / method
        run_dir.mkdir(parents=True, exist_ok=True)
        job = method_job(self.plan.job, method, self.plan.steps)
        save_job(job, run_dir / runs.JOB_FILE)
        if self.device in ("", "cpu") and self.baseline_gb is None:
            self.baseline_gb = library_baseline_gb()
        self._current = run_dir
        if self.status == "stopped":
            (run_dir / runs.STOP_FILE).touch()
        row = self._train(method, job, run_dir)
        self._current = None
        if row["status"] == "completed":
            self._evaluate(row, run_dir)
        row["wall_s"] = round((row["train_s"] or 0) + (row["eval_s"] or 0), 2)
        return row

    def _train(self, method: str, job: Any, run_dir: Path) -> dict[str, Any]:
        child = _Child(engine_command("train", str(run_dir / runs.JOB_FILE), "--run-dir",
                                      str(run_dir), "--events-stdout"),
                       run_dir / runs.CONSOLE_FILE)
        seen: list[ev.Event] = []
        for event in child.events():
            seen.append(event)
            if isinstance(event, ev.Step):
                self.emit(ev.Progress(stage="compare", current=event.step,
                                      total=event.max_steps,
                                      message=f"{method}: step {event.step}/{event.max_steps}"
                                              f", loss {event.loss:.4f}"))
            elif isinstance(event, ev.Progress):
                self.emit(ev.Progress(stage="compare", message=f"{method}: {event.message}"))
        code = child.wait()
        row = summarize(method, job, seen, self.baseline_gb)
        row["train_s"] = round(child.wall_s, 2)
        row["run_dir"] = str(run_dir.relative_to(self.plan.out))
        self.device = self.device or _device(seen)
        if code != 0 and row["status"] == "completed":
            row["status"] = "failed"
        if row["status"] == "failed" and not row["reason"]:
            row["reason"] = child.last_error_line() or f"the training child exited with {code}"
        if row["status"] == "stopped":
            row["reason"] = "stopped before the planned steps"
        return row

    def _evaluate(self, row: dict[str, Any], run_dir: Path) -> None:
        child = _Child(engine_command("evaluate", str(run_dir), "--loss-only",
                                      "--events-stdout"), run_dir / runs.CONSOLE_FILE)
        for event in child.events():
            if isinstance(event, ev.Progress):
                self.emit(ev.Progress(stage="compare", message=f"{row['method']}: "
                                      f"{event.message}", current=event.current,
                                      total=event.total))
        code = child.wait()
        row["eval_s"] = round(child.wall_s, 2)
        try:
            result = json.loads((run_dir / runs.EVALUATION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {}
        if code != 0 or not result:
            row["status"] = "failed"
            row["reason"] = "evaluation failed: " + (child.last_error_line() or f"exit {code}")
            return
        tuned, base = result.get("tuned") or {}, result.get("base") or {}
        row["held_out_loss"] = tuned.get("loss")
        row["perplexity"] = tuned.get("perplexity")
        row["base_loss"] = base.get("loss")
        if row["held_out_loss"] is None:
            row["reason"] = result.get("note", "no held-out rows")

    def result(self, elapsed: float) -> dict[str, Any]:
        job = self.plan.job
        base_loss = _base_loss(self.rows)
        reference = add_quality(self.rows, base_loss)
        return {
            "version": FORMAT_VERSION, "status": self.status, "created": time.time(),
            "elapsed_s": round(elapsed, 1), "job_file": str(self.plan.job_file),
            "job": job.to_dict(), "model": job.model.source, "dataset": job.dataset.path,
            "steps": self.plan.steps, "batch_size": job.training.batch_size,
            "max_length": job.dataset.max_length, "device": self.device or "cpu",
            "machine": machine_info(), "library_baseline_gb": _round(self.baseline_gb),
            "base_loss": base_loss, "reference": reference,
            "quality_definition": QUALITY_DEFINITION, "lesson": LESSON_CLAIMS,
            "methods": self.rows}


QUALITY_DEFINITION = ("(base_loss - method_loss) / (base_loss - reference_loss), from the "
                      "held-out loss: 1.0 improves on the base model as much as the reference "
                      "(full fine-tuning, else LoRA), 0 not at all")


def _device(seen: list[ev.Event]) -> str:
    for e in seen:
        if isinstance(e, ev.RunStarted):
            return e.device
    return ""


def _advisor_fits(plan: Plan) -> dict[str, str]:
    """method -> why it does not fit, for the methods the advisor predicts will not."""
    try:
        from engine.advisor import advise

        t = plan.job.training
        advice = advise(plan.job.model.source, seq_len=plan.job.dataset.max_length,
                        batch_size=t.batch_size, grad_accum=t.grad_accum,
                        gradient_checkpointing=t.gradient_checkpointing)
    except Exception:  # no advisor, an unknown model: let the runs tell
        return {}
    out = {}
    for method in plan.methods:
        entry = advice["methods"].get(method) or {}
        if entry and not entry.get("fits", True):
            out[method] = (f"does not fit: the advisor predicts {entry.get('expected', 0):.1f} "
                           f"GiB, {advice['target']}")
    return out


# --------------------------------------------------------------------------- the row


def blank_row(method: str, **values: Any) -> dict[str, Any]:
    from engine.methods import get_method

    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(method=method, label=get_method(method).label, reason="",
               learning_rate=get_method(method).suggested_lr)
    row.update(values)
    return row


def summarize(method: str, job: Any, seen: list[ev.Event],
              baseline_gb: float | None) -> dict[str, Any]:
    """A method's row from its training events (held-out loss comes later)."""
    row = blank_row(method, status="failed", steps=0)
    steps = [e for e in seen if isinstance(e, ev.Step)]
    for e in seen:
        if isinstance(e, ev.RunStarted):
            row.update(trainable_params=e.trainable_params, total_params=e.total_params,
                       trainable_share=e.trainable_params / max(e.total_params, 1))
        elif isinstance(e, ev.Error):
            row["reason"] = e.message + (f" — {e.advice}" if e.advice else "")
        elif isinstance(e, ev.RunFinished):
            row["status"] = e.status
    if steps:
        row["steps"] = steps[-1].step
        row["final_train_loss"] = steps[-1].loss
        # The first step carries warm-up (allocator, kernels): rates from the second on.
        rates = [s.tokens_per_s for s in (steps[1:] or steps) if s.tokens_per_s > 0]
        row["tokens_per_s"] = round(statistics.median(rates), 1) if rates else None
        row.update(_peak_memory(steps, baseline_gb))
    return row


def _peak_memory(steps: list[ev.Step], baseline_gb: float | None) -> dict[str, Any]:
    """GPU: the allocator's peak reserved memory; CPU: the peak RSS above the libraries."""
    mem = [s.memory for s in steps if s.memory]
    if not mem:
        return {}
    if mem[-1].get("kind") == "cuda":
        return {"memory_kind": "cuda_peak_reserved",
                "peak_memory_gb": max(float(m.get("peak_reserved_gb") or 0) for m in mem)}
    peak = max(float(m.get("peak_rss_gb") or 0) for m in mem)
    if baseline_gb is None:
        return {"memory_kind": "cpu_peak_rss", "peak_memory_gb": round(peak, 3)}
    return {"memory_kind": "cpu_peak_rss_growth",
            "peak_memory_gb": round(max(peak - baseline_gb, 0.0), 3)}


def _base_loss(rows: list[dict[str, Any]]) -> float | None:
    """The base model's held-out loss, as evaluated beside a full-precision method (QLoRA's
    "base" is the 4-bit one)."""
    from engine.methods import get_method

    for row in rows:
        if row.get("base_loss") is not None and not get_method(row["method"]).quantized_base:
            return float(row["base_loss"])
    return None


def add_quality(rows: list[dict[str, Any]], base_loss: float | None) -> str | None:
    """Fill each row's ``quality``; returns the reference method (None when there is none)."""
    done = {r["method"]: r for r in rows if r.get("held_out_loss") is not None}
    reference = next((m for m in REFERENCES if m in done), None)
    if reference is None or base_loss is None:
        return None
    gain = base_loss - done[reference]["held_out_loss"]
    if not gain > 0:
        return None  # the reference did not improve on the base: no scale to measure on
    for row in done.values():
        row["quality"] = round((base_loss - row["held_out_loss"]) / gain, 4)
    return reference


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# --------------------------------------------------------------------------- reading back


def load_comparison(folder: str | Path) -> dict[str, Any]:
    """A saved comparison (the folder, or its comparison.json)."""
    path = Path(folder)
    path = path / COMPARISON_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path} does not exist", "pass a comparison folder made by "
                        "`python -m engine compare`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
        raise UserError(f"{path} is not a comparison (no 'methods' list)")
    return data


def write_comparison(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / COMPARISON_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False,
                              default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def format_table(data: dict[str, Any]) -> str:
    ref = data.get("reference")
    head = (f"{'method':<20} {'trained':>12} {'share':>8} {'memory GB':>10} {'tok/s':>8} "
            f"{'wall s':>7} {'train loss':>10} {'held-out':>9} {'ppl':>8} "
            f"{'quality':>8}  lesson")
    lines = [f"comparison of {len(data['methods'])} methods on {data['model']} "
             f"({data['steps']} steps, batch {data['batch_size']}, {data['device']})", head]
    for r in data["methods"]:
        claim = data.get("lesson", {}).get(r["method"], {})
        lesson = " ".join(x for x in (claim.get("share"), claim.get("quality")) if x)
        if r["status"] not in ("completed",):
            lines.append(f"{r['label']:<20} {r['status']}: {r['reason']}")
            continue
        share = r["trainable_share"]
        lines.append(
            f"{r['label']:<20} {_fmt(r['trainable_params'], ',d'):>12} "
            f"{_fmt(None if share is None else 100 * share, '.3f'):>7}% "
            f"{_fmt(r['peak_memory_gb'], '.2f'):>10} {_fmt(r['tokens_per_s'], ',.0f'):>8} "
            f"{_fmt(r['wall_s'], '.0f'):>7} {_fmt(r['final_train_loss'], '.4f'):>10} "
            f"{_fmt(r['held_out_loss'], '.4f'):>9} {_fmt(r['perplexity'], '.2f'):>8} "
            f"{_fmt(None if r['quality'] is None else 100 * r['quality'], '.0f'):>7}%  "
            f"{lesson}")
    base = data.get("base_loss")
    lines.append(f"base model held-out loss: {_fmt(base, '.4f')}; quality = "
                 + (f"relative to {ref}" if ref else "not computed (no reference finished)")
                 + (" (full fine-tuning was not run or did not finish)" if ref == "lora" else ""))
    kind = next((r["memory_kind"] for r in data["methods"] if r.get("memory_kind")), "")
    if kind:
        lines.append(f"memory: {MEMORY_KINDS.get(kind, kind)}")
    return "\n".join(lines)


MEMORY_KINDS = {
    "cuda_peak_reserved": "peak GPU memory reserved by torch during training",
    "cpu_peak_rss_growth": "the training process's peak RSS above a process that only "
                           "imported the libraries",
    "cpu_peak_rss": "the training process's peak RSS",
}


# --------------------------------------------------------------------------- the verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="the job file (YAML) or a preset name")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default: every method)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps per method (default: the job's max_steps, "
                             f"else {DEFAULT_STEPS})")
    parser.add_argument("--out", default=None,
                        help="comparison folder (default: <runs_dir>/compare-<name>-<time>)")
    parser.add_argument("--show", default=None, metavar="DIR",
                        help="print a saved comparison instead of running one")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--events-stdout", action="store_true",
                        help="write events as JSON lines on stdout (for the GUI)")


class _Lines:
    """Progress for a person: one line per method (and per step on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.MethodCompared):
            r = event.row
            what = {"running": "training…",
                    "completed": f"held-out loss {_fmt(r.get('held_out_loss'), '.4f')}, "
                                 f"{_fmt(r.get('wall_s'), '.0f')} s"}.get(
                                     event.status, f"{event.status}: {r.get('reason', '')}")
            print(f"[{event.index + 1}/{event.total}] {r.get('label', event.method)}: {what}",
                  file=self.stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries
    from engine.train_cli import StopSignal

    quiet_libraries()
    if args.show:
        data = load_comparison(args.show)
        print(json.dumps(data, indent=2, ensure_ascii=False) if args.json
              else format_table(data))
        return 0
    if not args.job:
        raise UserError("compare needs a job file (or --show DIR)",
                        "python -m engine compare JOB.yaml [--methods lora,qlora]")
    plan = make_plan(args)
    out = sys.stdout
    emit: ev.EventSink = _Lines(sys.stderr)
    if args.events_stdout:
        sys.stdout = sys.stderr  # stdout carries only event lines
        emit = ev.JsonLineSink(out)
    print(f"comparison folder: {plan.out}", file=sys.stderr, flush=True)
    comparison = Comparison(plan, emit, StopSignal(plan.out, args.events_stdout))
    try:
        data = comparison.run()
        write_comparison(plan.out, data)
    finally:
        sys.stdout = out
    return ev.write_result(out, data, as_json=args.json, quiet=args.events_stdout,
                           format_text=format_table)



def scan_comparisons(runs_dir: str | Path) -> list[Path]:
    """Comparison folders (with a comparison.json) directly under ``runs_dir``, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*/{COMPARISON_FILE}")]
    return sorted(found, key=lambda p: (p / COMPARISON_FILE).stat().st_mtime, reverse=True)


__all__ = ["COMPARISON_FILE", "LESSON_CLAIMS", "ROW_FIELDS", "Comparison", "add_quality",
           "blank_row", "format_table", "load_comparison", "method_job", "scan_comparisons",
           "summarize", "write_comparison"]
