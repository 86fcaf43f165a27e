"""Datasets: read, detect the format, check every row, tokenize once (cached), pack, split."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import resources
from engine.data._formats import EXPECTED, Sample, detect_format, single_class, to_samples
from engine.data._readers import (
    Row,
    check_dataset_source,
    dataset_files,
    is_hub_dataset_id,
    read_rows,
)
from engine.data._tokenize import (
    IGNORE,
    encode_all,
    ensure_chat_template,
    pack,
    segments,
    unpacked,
)
from engine.errors import DataError

__all__ = [
    "EXPECTED",
    "IGNORE",
    "DatasetReport",
    "PreparedData",
    "Row",
    "Sample",
    "check_dataset_source",
    "detect_format",
    "inspect_dataset",
    "is_hub_dataset_id",
    "load_samples",
    "prepare_sft",
    "read_rows",
    "split_samples",
]

CACHE_VERSION = 1
# Model types whose attention builds a block-diagonal mask from restarting position ids
# (transformers' masking_utils.find_packed_sequence_indices), so packing is exact.
PACKING_EXACT = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                 "olmo2", "granite"}


def load_samples(path: str, fmt: str = "auto", *, split: str = "train", text_column: str = "",
                 label_column: str = "", system_prompt: str = "", task: str = "sft",
                 max_rows: int = 0) -> tuple[list[Sample], str, bool]:
    """Samples, the format, and whether it was detected; DataError listing every bad row."""
    rows = read_rows(path, split)
    if max_rows:
        rows = rows[:max_rows]
    detected = fmt == "auto"
    if detected:
        fmt = detect_format(rows, text_column, label_column, task)
    if task == "classify" and fmt != "classification":
        raise DataError(f"dataset {path}: task classify needs the classification format, "
                        f"found {fmt}", [], "use rows with a text and a label column")
    samples, problems = to_samples(rows, fmt, text_column=text_column,
                                   label_column=label_column, system_prompt=system_prompt)
    if problems:
        how = "detected" if detected else "set"
        raise DataError(f"dataset {path}: {len(problems)} of {len(rows)} rows do not fit the "
                        f"{how} format {fmt}", problems,
                        "fix those rows, or set dataset.format if the detection is wrong")
    one = single_class(samples) if task == "classify" else None
    if one:
        raise DataError(f"dataset {path}: only one class", [one], ONE_CLASS_ADVICE)
    return samples, fmt, detected


ONE_CLASS_ADVICE = ("add rows of another class, or set dataset.label_column if that is the "
                    "wrong column")


def split_samples(samples: list[Any], eval_split: float, seed: int) -> tuple[list[Any],
                                                                            list[Any]]:
    """Shuffle with the seed and hold out a share (< 1) or a count (>= 1) for evaluation."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_eval = int(eval_split) if eval_split >= 1 else round(len(samples) * eval_split)
    if eval_split > 0:
        n_eval = max(1, n_eval)
    n_eval = min(n_eval, len(samples) - 1)
    shuffled = [samples[i] for i in order]
    return shuffled[n_eval:], shuffled[:n_eval]


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    format: str
    detected: bool
    train_rows: int
    eval_rows: int
    packed: bool
    truncated: int
    dropped: int
    trained_tokens: int
    eval_samples: list[Sample] = field(default_factory=list)


def _cache_key(job: Any, tokenizer: Any, packed: bool) -> str:
    ds = job.dataset
    files = []
    path = resources.locate(ds.path)
    if path.exists():
        for f in dataset_files(path):
            st = f.stat()
            files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    parts = {
        "v": CACHE_VERSION, "files": files, "source": ds.path, "dataset": vars(ds),
        "seed": job.training.seed, "packed": packed, "task": job.task,
        "tokenizer": [getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                      tokenizer.eos_token_id, str(getattr(tokenizer, "chat_template", ""))],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def prepare_sft(job: Any, tokenizer: Any, *, model_type: str = "", cache: Path | None = None,
                progress: Any = None, allow_packing: bool = True) -> PreparedData:
    """Tokenized train/eval sequences for a causal-LM job, cached by content.

    ``allow_packing=False`` (methods that prepend virtual tokens) keeps one sample a sequence.
    """
    ds = job.dataset
    packed = allow_packing and (
        ds.packing == "on" or (ds.packing == "auto" and model_type in PACKING_EXACT))
    ensure_chat_template(tokenizer)
    samples, fmt, detected = load_samples(
        ds.path, ds.format, split=ds.split, text_column=ds.text_column,
        label_column=ds.label_column, system_prompt=ds.system_prompt, task=job.task,
        max_rows=ds.max_rows)
    train_s, eval_s = split_samples(samples, ds.eval_split, job.training.seed)
    cache_file = None
    if cache is not None:
        cache_file = cache / f"{_cache_key(job, tokenizer, packed)}.json"
        if cache_file.is_file():
            stored = json.loads(cache_file.read_text())
            return PreparedData(**stored, eval_samples=eval_s)
    train_enc, stats = encode_all(tokenizer, train_s, ds.max_length, ds.overflow, progress)
    eval_enc, eval_stats = encode_all(tokenizer, eval_s, ds.max_length, ds.overflow)
    if not train_enc:
        raise DataError(f"dataset {ds.path}: no training sample is left after max_length "
                        f"{ds.max_length} ({stats.dropped} dropped)", [],
                        "raise dataset.max_length or set dataset.overflow: truncate")
    result = {
        "train": pack(train_enc, ds.max_length) if packed else unpacked(train_enc),
        "eval": unpacked(eval_enc),
        "format": fmt, "detected": detected, "train_rows": len(train_enc),
        "eval_rows": len(eval_enc), "packed": packed,
        "truncated": stats.truncated + eval_stats.truncated,
        "dropped": stats.dropped + eval_stats.dropped,
        "trained_tokens": sum(sum(1 for x in e.labels if x != IGNORE) for e in train_enc),
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # a temp file of this process's own: ranks of a multi-device run tokenize the same
        # data at the same time, and a shared name would be renamed away under another rank
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(result))
            tmp.replace(cache_file)  # atomic: a reader sees the old file or the whole new one
        finally:
            tmp.unlink(missing_ok=True)
    return PreparedData(**result, eval_samples=eval_s)


@dataclass
class DatasetReport:
    """What ``python -m engine data`` and the GUI's Data page show."""

    path: str
    format: str
    detected: bool
    rows: int
    problems: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    max_length: int = 0
    preview: list[list[tuple[str, bool]]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        stats = {}
        if lengths:
            stats = {"min": lengths[0], "max": lengths[-1],
                     "mean": round(sum(lengths) / len(lengths), 1),
                     "p50": lengths[len(lengths) // 2],
                     "p95": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]}
        return {"path": self.path, "format": self.format, "detected": self.detected,
                "rows": self.rows, "valid": not self.problems, "problems": self.problems,
                "token_lengths": stats, "max_length": self.max_length,
                "truncated": self.truncated, "dropped": self.dropped, "labels": self.labels}


def inspect_dataset(path: str, *, format: str = "auto", model_source: str | None = None,
                    max_length: int = 512, overflow: str = "truncate", text_column: str = "",
                    label_column: str = "", task: str = "sft", preview_rows: int = 5,
                    system_prompt: str = "", split: str = "train") -> DatasetReport:
    """Check every row; with a model, token lengths and a preview as the model sees it.

    Unreadable input (missing file, broken JSON) raises DataError/UserError; rows that do not
    fit the format are listed in ``problems``.
    """
    rows = read_rows(path, split)
    detected = format == "auto"
    fmt = detect_format(rows, text_column, label_column, task) if detected else format
    samples, problems = to_samples(rows, fmt, text_column=text_column,
                                   label_column=label_column, system_prompt=system_prompt)
    report = DatasetReport(path, fmt, detected, len(rows), problems, max_length=max_length)
    if fmt == "classification":
        for s in samples:
            report.labels[s.label or ""] = report.labels.get(s.label or "", 0) + 1
        one = None if problems else single_class(samples)
        if one:
            report.problems.append(f"{one}: {ONE_CLASS_ADVICE}")
    if model_source is None or not samples:
        return report
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(model_source)
    if fmt == "classification":
        report.lengths = [len(tokenizer(s.text)["input_ids"]) for s in samples]
        report.truncated = sum(n > max_length for n in report.lengths)
        report.preview = [[(s.text or "", False), (f"  → {s.label}", True)]
                          for s in samples[:preview_rows]]
        return report
    ensure_chat_template(tokenizer)
    encoded, stats = encode_all(tokenizer, samples, max_length, overflow)
    report.lengths, report.truncated, report.dropped = (stats.lengths, stats.truncated,
                                                        stats.dropped)
    report.preview = [segments(tokenizer, e.input_ids, e.labels) for e in encoded[:preview_rows]]
    return report

