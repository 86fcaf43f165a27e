"""``python -m engine evaluate RUN_DIR [--prompts FILE] [--json]``: base vs tuned, side by side.

For a chat/completion run: the held-out loss and perplexity of the base model and of the tuned
model on the run's own eval split, and greedy answers of both to a fixed prompt set. For a
classify run: accuracy, macro-F1 and the confusion matrix (engine.classify). The result is
returned, written to ``RUN_DIR/evaluation.json`` (the export's model card quotes it) and,
with ``--json``, printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import runs
from engine._samples import sample_prompts_for
from engine.errors import UserError

DEFAULT_PROMPTS = (
    "Introduce yourself in two sentences.",
    "What is the capital of France?",
    "Give me three tips for staying focused.",
)


def evaluate_run(run_dir: str | Path, *, emit: ev.EventSink | None = None,
                 prompts: list[str] | None = None, max_new_tokens: int | None = None,
                 answers: bool = True) -> dict[str, Any]:
    """Evaluate a finished run; ``prompts`` default to the job's sample prompts, then to the
    first held-out questions, then to a built-in set. ``answers=False``: losses only (the
    comparison of methods needs no answers)."""
    from engine.export import open_run

    sink: ev.EventSink = emit or (lambda _e: None)
    start = time.perf_counter()
    info = open_run(run_dir)
    if info.job.task == "classify":
        result = _evaluate_classify(info, sink)
    else:
        result = _evaluate_sft(info, sink, prompts,
                               max_new_tokens or info.job.training.sample_max_new_tokens,
                               answers)
    result["elapsed_s"] = round(time.perf_counter() - start, 2)
    _write_result(info.run_dir, result)
    return result


# --------------------------------------------------------------------------- sft


def _evaluate_sft(info: Any, emit: ev.EventSink, prompts: list[str] | None,
                  max_new_tokens: int, answers: bool = True) -> dict[str, Any]:
    from engine.data import prepare_sft
    from engine.export import load_pair, load_tokenizer
    from engine.export._stops import stop_token_ids
    from engine.models import cache_dir, load_config

    tokenizer = load_tokenizer(info)
    emit(ev.Progress(stage="evaluate", current=0, total=1, message="reading the held-out data"))
    config = load_config(info.base_folder(emit),
                         trust_remote_code=info.job.model.trust_remote_code)
    data = prepare_sft(info.job, tokenizer, model_type=config.model_type,
                       cache=cache_dir() / "datasets")
    emit(ev.Progress(stage="evaluate", current=0, total=1, message="loading base and tuned"))
    pair = load_pair(info, emit=emit)
    stops = stop_token_ids(tokenizer, getattr(config, "eos_token_id", None))
    prompts = list(prompts or sample_prompts_for(info.job, data)
                   or DEFAULT_PROMPTS) if answers else []
    result: dict[str, Any] = {"run_dir": str(info.run_dir), "task": "sft",
                              "method": info.method, "eval_rows": len(data.eval),
                              "base": {}, "tuned": {}, "answers": []}
    for which in ("base", "tuned"):
        with pair.use(which) as model:
            if data.eval:
                loss = held_out_loss(model, data.eval, tokenizer.pad_token_id,
                                     info.job.training.batch_size, emit, which)
                result[which] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
            texts = [greedy_answer(model, tokenizer, p, max_new_tokens, stops) for p in prompts]
        for i, text in enumerate(texts):
            if which == "base":
                result["answers"].append({"prompt": prompts[i], "base": text})
            else:
                result["answers"][i]["tuned"] = text
    if not data.eval:
        result["note"] = "the run has no held-out rows (dataset.eval_split: 0): no loss to show"
    _emit_summary(result, info, emit)
    return result


def held_out_loss(model: Any, rows: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                  emit: ev.EventSink, which: str) -> float:
    """Mean cross-entropy per answer token (the tokens training learned from)."""
    import torch

    from engine.training import Collator

    device = next(model.parameters()).device
    collate = Collator(pad_id)
    total, count = 0.0, 0
    batches = range(0, len(rows), batch_size)
    for n, i in enumerate(batches):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size]).items()}
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits.float()
        # Prompt tuning puts its virtual tokens in front: their logits come first.
        logits = logits[:, logits.shape[1] - labels.shape[1]:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels[:, 1:] != -100).sum())
        emit(ev.Progress(stage="evaluate", current=n + 1, total=len(batches),
                         message=f"held-out loss ({which})"))
    return total / max(count, 1)


def greedy_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
                  stops: list[int]) -> str:
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    device = next(model.parameters()).device
    enc = tokenizer(str(text), return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
    return str(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:],
                                skip_special_tokens=True)).strip()


def _emit_summary(result: dict[str, Any], info: Any, emit: ev.EventSink) -> None:
    step = _final_step(info.run_dir)
    if result["tuned"]:
        emit(ev.Eval(step=step, eval_loss=result["tuned"]["loss"], metrics={
            "perplexity": result["tuned"]["perplexity"],
            "base_loss": result["base"]["loss"],
            "base_perplexity": result["base"]["perplexity"]}))
    for answer in result["answers"]:
        emit(ev.Sample(step=step, prompt=answer["prompt"], text=answer["tuned"]))


def _final_step(run_dir: Path) -> int:
    steps = [e.step for e in runs.run_events(run_dir) if isinstance(e, ev.RunFinished)]
    return steps[-1] if steps else 0


# --------------------------------------------------------------------------- classify


def _evaluate_classify(info: Any, emit: ev.EventSink) -> dict[str, Any]:
    try:
        from engine import classify
    except ImportError:
        return {"run_dir": str(info.run_dir), "task": "classify", "method": info.method,
                "note": "classification metrics are not available in this build"}
    import torch

    emit(ev.Progress(stage="evaluate", current=0, total=1, message="loading the classifier"))
    model, tokenizer, labels = classify.load_classifier(info.run_dir)
    data = classify.prepare_classify(info.job, tokenizer)
    collate = classify.Collator(tokenizer.pad_token_id or 0)
    predicted, truth = [], []
    size = info.job.training.batch_size
    for i in range(0, len(data.eval), size):
        batch = collate(data.eval[i:i + size])
        truth += batch.pop("labels").tolist()
        with torch.no_grad():
            predicted += model(**batch).logits.argmax(-1).tolist()
    metrics = classify.classification_metrics(predicted, truth, labels)
    emit(ev.Eval(step=_final_step(info.run_dir), eval_loss=0.0, metrics=metrics))
    return {"run_dir": str(info.run_dir), "task": "classify", "method": info.method,
            "eval_rows": len(data.eval), "tuned": metrics,
            "note": "the base model has no trained classifier head, so only the tuned model "
                    "is scored"}


# --------------------------------------------------------------------------- output


def _write_result(run_dir: Path, result: dict[str, Any]) -> None:
    path = run_dir / runs.EVALUATION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def format_report(result: dict[str, Any]) -> str:
    lines = [f"evaluation of {result['run_dir']} ({result['method']}, {result['task']})"]
    if result["task"] == "classify":
        m = result.get("tuned") or {}
        if m:
            lines.append(f"accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} on "
                         f"{result['eval_rows']} held-out rows")
    elif result["tuned"]:
        b, t = result["base"], result["tuned"]
        lines.append(f"held-out loss   base {b['loss']:.4f}  tuned {t['loss']:.4f}")
        lines.append(f"perplexity      base {b['perplexity']:.2f}  tuned {t['perplexity']:.2f}"
                     f"   ({result['eval_rows']} rows)")
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    for a in result.get("answers", []):
        lines += ["", f"» {a['prompt']}", f"  base : {a['base']}", f"  tuned: {a['tuned']}"]
    return "\n".join(lines)


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompts {path} does not exist", "pass a text file, one prompt a line")
    if p.suffix in (".json", ".jsonl"):
        text = p.read_text(encoding="utf-8")
        try:
            items = json.loads(text) if p.suffix == ".json" else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path} is not valid JSON: {exc}") from None
        prompts = [i if isinstance(i, str) else str(i.get("prompt", "")) for i in items]
    else:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    prompts = [x for x in prompts if x]
    if not prompts:
        raise UserError(f"--prompts {path} holds no prompts", "one prompt a line")
    return prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run folder (runs/<name>-<timestamp>)")
    parser.add_argument("--prompts", default=None,
                        help="prompts to answer: a text file (one a line), .json list or .jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="length of each answer (default: the job's sample length)")
    parser.add_argument("--loss-only", action="store_true",
                        help="held-out losses only, no answers (faster)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--events-stdout", action="store_true",
                        help="write events as JSON lines on stdout (for the GUI)")


def _print_progress(event: ev.Event) -> None:
    if isinstance(event, ev.Progress):
        print(f"… {event.message}", file=sys.stderr, flush=True)
    elif isinstance(event, ev.Warning):
        print(f"warning: {event.message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries

    quiet_libraries()
    prompts = _read_prompts(args.prompts) if args.prompts else None
    out = sys.stdout
    emit: ev.EventSink = _print_progress
    if args.events_stdout:
        sys.stdout = sys.stderr  # stdout carries only event lines
        emit = ev.JsonLineSink(out)
    try:
        result = evaluate_run(args.run_dir, emit=emit, prompts=prompts,
                              max_new_tokens=args.max_new_tokens, answers=not args.loss_only)
    except UserError as exc:
        if args.events_stdout:  # the GUI reads the reason as an event, like train and export
            emit(ev.Error(code=exc.code, message=exc.message, advice=exc.advice))
        raise
    finally:
        sys.stdout = out
    return ev.write_result(out, result, as_json=args.json, quiet=args.events_stdout,
                           format_text=format_report)

