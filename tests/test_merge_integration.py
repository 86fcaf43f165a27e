"""The merge check on the real default model: every mergeable method's correct merge passes on
any machine (the tolerance follows the logits' scale), and a wrong merge is still refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.methods import METHODS

REPO = Path(__file__).resolve().parent.parent
MERGEABLE = sorted(m for m, spec in METHODS.items() if spec.mergeable and m != "full")


def _train(method: str, root: Path) -> Path:
    from engine.config import job_from_dict
    from engine.training import run_training

    job = job_from_dict({
        "name": method, "model": {"source": "smollm2-135m-instruct"},
        "dataset": {"path": str(REPO / "resources/datasets/pirate-persona.jsonl"),
                    "max_length": 64, "max_rows": 8, "eval_split": 0},
        "method": {"name": method},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                     "warmup_ratio": 0.0},
        "output": {"runs_dir": str(root / "runs")}})
    run_dir = root / "runs" / method
    assert run_training(job, run_dir=run_dir, emit=lambda _e: None).status == "completed"
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each method trained once for the module (the LoRA run serves two tests)."""
    runs: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in runs:
            runs[method] = _train(method, tmp_path_factory.mktemp(method))
        return runs[method]

    return get


def _merge(run_dir: Path) -> Any:
    from engine.export._merge import merge_run
    from engine.export._run import load_tokenizer, open_run

    info = open_run(run_dir)
    return merge_run(info, load_tokenizer(info), "cpu", lambda _e: None)


@pytest.mark.integration
@pytest.mark.parametrize("method", MERGEABLE)
def test_correct_merges_of_the_default_model_pass(method: str, trained: Any) -> None:
    if METHODS[method].quantized_base:
        pytest.importorskip("bitsandbytes")
    merged = _merge(trained(method))
    assert merged.max_logit_diff is not None
    assert merged.notes and "merge checked" in merged.notes[0]


@pytest.mark.integration
def test_a_doubled_adapter_on_the_default_model_is_refused(
        trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import LoraModel

    from engine.export import ExportCheckFailed

    run_dir = trained("lora")
    merge = LoraModel.merge_and_unload

    def doubled(self: Any, *args: Any, **kwargs: Any) -> Any:
        for layer in self.model.modules():
            if isinstance(getattr(layer, "scaling", None), dict):
                layer.scaling = {k: 2 * v for k, v in layer.scaling.items()}
        return merge(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "merge_and_unload", doubled)
    with pytest.raises(ExportCheckFailed):
        _merge(run_dir)
