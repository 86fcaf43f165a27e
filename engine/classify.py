"""Sequence classification (task ``classify``): data, batches, metrics, trained models.

Rows with a text and a label column become ``{"input_ids", "labels": class index}``. The label
names, sorted, fix the class indices; they are stored in the model config (``id2label`` /
``label2id``) so a saved result names its classes. Evaluation reports accuracy, macro-F1 and
the confusion matrix (rows: true label, columns: predicted), with the label names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DataError, UserError

DEFAULT_MODEL = "minilm-l6"
LABELS_FILE = "labels.json"


@dataclass
class ClassifyData:
    """Tokenized rows; the same fields as engine.data.PreparedData, plus the label names."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    labels: list[str]
    format: str
    detected: bool
    train_rows: int
    eval_rows: int
    truncated: int
    packed: bool = False
    dropped: int = 0
    trained_tokens: int = 0
    eval_texts: list[str] = field(default_factory=list)


@dataclass
class ClassifySetup:
    """What training.py needs for a classify job."""

    data: ClassifyData
    collator: Any
    compute_metrics: Any
    model_kwargs: dict[str, Any]

    def write_extras(self, folder: Path) -> None:
        """Store the label names beside the result (an adapter folder has no model config)."""
        import json

        (Path(folder) / LABELS_FILE).write_text(json.dumps({"labels": self.data.labels}))


def label_kwargs(labels: list[str]) -> dict[str, Any]:
    """from_pretrained keywords that give the model one output per label, named."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def prepare_classify(job: Any, tokenizer: Any) -> ClassifyData:
    """Read, check, split and tokenize the job's classification dataset."""
    from engine.data import load_samples, split_samples

    ds = job.dataset
    samples, fmt, detected = load_samples(
        ds.path, ds.format, split=ds.split, text_column=ds.text_column,
        label_column=ds.label_column, task="classify", max_rows=ds.max_rows)
    labels = sorted({str(s.label) for s in samples})
    if len(labels) < 2:
        raise DataError(f"dataset {ds.path}: classification needs at least two labels, found "
                        f"{labels}", [], "check dataset.label_column")
    index = {name: i for i, name in enumerate(labels)}
    train_s, eval_s = split_samples(samples, ds.eval_split, job.training.seed)

    def encode(rows: list[Any]) -> tuple[list[dict[str, Any]], int]:
        out, truncated = [], 0
        for s in rows:
            ids = tokenizer(s.text or "", truncation=False)["input_ids"]
            if len(ids) > ds.max_length:
                truncated += 1
                # Keep the end token (BERT's [SEP], EOS...) where the tokenizer adds one.
                ids = ids[: ds.max_length - 1] + ids[-1:]
            out.append({"input_ids": ids, "labels": index[str(s.label)]})
        return out, truncated

    train, t1 = encode(train_s)
    evald, t2 = encode(eval_s)
    return ClassifyData(train=train, eval=evald, labels=labels, format=fmt, detected=detected,
                        train_rows=len(train), eval_rows=len(evald), truncated=t1 + t2,
                        trained_tokens=sum(len(r["input_ids"]) for r in train),
                        eval_texts=[s.text or "" for s in eval_s])


class Collator:
    """Pad on the right with an attention mask; one class index per row."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        return {
            "input_ids": torch.tensor([r["input_ids"] + [self.pad_id] * (n - len(r["input_ids"]))
                                       for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"])
                                            + [0] * (n - len(r["input_ids"])) for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }


def classification_metrics(predicted: list[int], truth: list[int],
                           labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over every label) and the confusion matrix [true][predicted]."""
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for p, t in zip(predicted, truth, strict=True):
        matrix[t][p] += 1
    n = len(truth)
    correct = sum(matrix[i][i] for i in range(k))
    f1s = []
    for i in range(k):
        tp = matrix[i][i]
        pred_i = sum(matrix[r][i] for r in range(k))
        true_i = sum(matrix[i])
        f1s.append(2 * tp / (pred_i + true_i) if pred_i + true_i else 0.0)
    return {"accuracy": correct / n if n else 0.0, "macro_f1": sum(f1s) / k if k else 0.0,
            "confusion_matrix": matrix, "labels": list(labels)}


def metrics_fn(labels: list[str]) -> Any:
    """The Trainer's ``compute_metrics`` for these labels."""

    def compute(eval_pred: Any) -> dict[str, Any]:
        import numpy as np

        logits = eval_pred.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = np.asarray(logits).argmax(-1).tolist()
        truth = np.asarray(eval_pred.label_ids).reshape(-1).tolist()
        return classification_metrics(predicted, truth, labels)

    return compute


def setup_classify(job: Any, tokenizer: Any) -> ClassifySetup:
    data = prepare_classify(job, tokenizer)
    kwargs = label_kwargs(data.labels)
    # Decoder models classify from the last real token: they must know which id is padding.
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    return ClassifySetup(data, Collator(tokenizer.pad_token_id), metrics_fn(data.labels),
                         kwargs)


# --------------------------------------------------------------------------- trained models


def load_classifier(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, label names) of a finished classify run, ready for ``predict``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from engine.config import load_job
    from engine.methods import get_method
    from engine.models import load_base, load_model_dir, resolve_precision
    from engine.runs import JOB_FILE

    run_dir = Path(run_dir)
    job = load_job(run_dir / JOB_FILE)
    if job.task != "classify":
        raise UserError(f"run {run_dir} is a {job.task} run, not a classify run", code="bad_run")
    spec = get_method(job.method.name)
    result = run_dir / spec.output_dir
    if not result.is_dir():
        raise UserError(f"run {run_dir} has no {spec.output_dir}/ folder (did it finish?)",
                        code="bad_run")
    trust = {"trust_remote_code": True} if job.model.trust_remote_code else {}
    tokenizer = AutoTokenizer.from_pretrained(result, **trust)
    if job.method.name == "full":
        model = AutoModelForSequenceClassification.from_pretrained(result, dtype=torch.float32,
                                                                   **trust)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return model.to(device).eval(), tokenizer, labels
    labels = saved_labels(result)
    # The base exactly as training loaded it (4-bit for QLoRA), with one output per label.
    base = load_base(job, load_model_dir(job.model.source), device,
                     resolve_precision("fp32", device), spec.quantized_base,
                     {**label_kwargs(labels), "pad_token_id": tokenizer.pad_token_id})
    model = spec.load_trained(base, result)
    return model.eval(), tokenizer, labels


def saved_labels(folder: Path) -> list[str]:
    """The label names a classify run stored beside its result (labels.json)."""
    import json

    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        raise UserError(f"{folder} has no {LABELS_FILE}", "it was not written by a classify run",
                        code="bad_run")
    return list(json.loads(path.read_text())["labels"])


def predict(model: Any, tokenizer: Any, texts: list[str], labels: list[str],
            max_length: int = 512) -> list[tuple[str, float]]:
    """The most likely label of each text with its probability."""
    import torch

    device = next(model.parameters()).device
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True,
                        max_length=max_length).to(device)
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)[0]
        i = int(probs.argmax())
        out.append((labels[i], float(probs[i])))
    return out
