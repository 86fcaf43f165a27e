"""Task classify: label handling, metrics, training with each method, reload."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import methods
from engine.classify import classification_metrics, load_classifier, predict
from engine.config import job_from_dict, load_job
from engine.errors import ConfigError
from engine.methods import get_method

REPO = Path(__file__).resolve().parent.parent
TICKETS = REPO / "resources" / "datasets" / "support-tickets.csv"
PROBE = ["I was charged twice for my subscription", "The export button crashes the app"]


def test_metrics_by_hand() -> None:
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # F1: a 1, b 2/3, c 2/3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert m["labels"] == ["a", "b", "c"]


def _job(tmp_path: Path, method: str, source: str = "minilm-l6", **training: Any) -> Any:
    return job_from_dict({
        "name": f"c-{method}", "task": "classify", "model": {"source": source},
        "dataset": {"path": str(TICKETS), "max_length": 32, "eval_split": 8, "max_rows": 40},
        "method": {"name": method, "r": 4, "bottleneck_size": 8, "num_virtual_tokens": 4},
        # fp32: logits after training (still under the Trainer's autocast) are compared with
        # a reload's in fp32 (auto is bf16 on a native-bf16 CPU)
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "device": "cpu",
                     "precision": "fp32", **training},
        "output": {"runs_dir": str(tmp_path / "runs")}})


def _probe_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    was = model.training
    model.eval()
    enc = tokenizer(PROBE, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc.to(model.device)).logits.float().cpu()
    model.train(was)
    return logits


@pytest.mark.parametrize("method", ["full", "lora", "dora", "qlora", "ia3", "adapter", "prompt"])
def test_classify_trains_evaluates_and_reloads(method: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.training import run_training

    spec = get_method(method)
    seen: dict[str, torch.Tensor] = {}
    tokenizer_box: list[Any] = []

    def save_and_remember(model: Any, folder: Path) -> None:
        from engine.models import load_model_dir, load_tokenizer

        tokenizer_box.append(load_tokenizer(load_model_dir("minilm-l6")))
        seen["logits"] = _probe_logits(model, tokenizer_box[0])
        spec.save(model, folder)

    monkeypatch.setitem(methods.METHODS, method, dataclasses.replace(spec, save=save_and_remember))
    events: list[Any] = []
    result = run_training(_job(tmp_path, method), run_dir=tmp_path / "run",
                          emit=events.append)
    assert result.status == "completed"
    assert all(math.isfinite(e.loss) for e in events if e.type == "step")
    (evaluation,) = [e for e in events if e.type == "eval"]
    m = evaluation.metrics
    assert m["labels"] == ["account", "billing", "bug", "feature_request"]
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    assert sum(map(sum, m["confusion_matrix"])) == 8 and len(m["confusion_matrix"]) == 4
    assert not [e for e in events if e.type == "sample"]

    model, tokenizer, labels = load_classifier(result.run_dir)
    assert labels == m["labels"]
    torch.testing.assert_close(_probe_logits(model, tokenizer), seen["logits"],
                               rtol=1e-4, atol=1e-4)
    answers = predict(model, tokenizer, PROBE, labels)
    assert all(label in labels and 0 < p <= 1 for label, p in answers)
    if method == "full":
        assert model.config.id2label[0] == "account"  # label names kept in the model config


def test_classify_on_a_decoder_model(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """Llama classifies from its last real token: the pad id must reach the model config."""
    from engine.training import run_training

    events: list[Any] = []
    job = _job(tmp_path, "lora", source=str(tiny_llama_dir))
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)
    assert result.status == "completed"
    assert any(e.type == "eval" and "macro_f1" in e.metrics for e in events)
    model, tokenizer, labels = load_classifier(result.run_dir)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert len(predict(model, tokenizer, PROBE, labels)) == 2


def test_prefix_on_bert_is_refused_before_training(tmp_path: Path) -> None:
    from engine.training import run_training

    events: list[Any] = []
    with pytest.raises(ConfigError, match="prefix cannot work with bert"):
        run_training(_job(tmp_path, "prefix"), run_dir=tmp_path / "run", emit=events.append)
    assert not [e for e in events if e.type == "step"]
    assert events[-1].type == "run_finished" and events[-1].status == "failed"


def test_demo_preset_is_a_valid_classify_job() -> None:
    job = load_job(REPO / "resources" / "presets" / "demo-classify.yaml")
    assert job.task == "classify" and job.model.source == "minilm-l6"
    assert Path(job.dataset.path).name == "support-tickets.csv"
    assert (REPO / "resources" / "presets" / "demo-classify.yaml").read_text().startswith("#")
