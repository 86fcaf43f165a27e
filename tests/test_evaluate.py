"""evaluate: held-out loss and perplexity of base vs tuned, answers side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from test_export import small_model_dirs, train_run  # noqa: F401 - fixtures

from engine import events as ev


@pytest.fixture(scope="module")
def lora_run(small_model_dirs: dict[str, Path],  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(small_model_dirs["llama"], tmp_path_factory.mktemp("eval-lora"),
                     max_steps=4)


def test_evaluate_lora(lora_run: Path) -> None:
    from engine.evaluate import evaluate_run
    from engine.runs import EVALUATION_FILE

    events: list[Any] = []
    result = evaluate_run(lora_run, emit=events.append, prompts=["What is 4 plus 4?"],
                          max_new_tokens=6)
    base, tuned = result["base"], result["tuned"]
    assert result["eval_rows"] >= 1
    for side in (base, tuned):
        assert math.isfinite(side["loss"])
        assert side["perplexity"] == pytest.approx(math.exp(side["loss"]))
    assert tuned["loss"] < base["loss"], "4 steps at lr 1e-2 on this data lower the loss"
    [answer] = result["answers"]
    assert answer["prompt"] == "What is 4 plus 4?" and {"base", "tuned"} <= set(answer)
    assert json.loads((lora_run / EVALUATION_FILE).read_text())["tuned"] == tuned
    evals = [e for e in events if isinstance(e, ev.Eval)]
    assert evals and evals[-1].metrics["base_loss"] == base["loss"]
    assert any(isinstance(e, ev.Sample) for e in events)
    assert any(isinstance(e, ev.Progress) for e in events)


def test_evaluate_defaults_to_held_out_questions(lora_run: Path) -> None:
    from engine.evaluate import evaluate_run

    result = evaluate_run(lora_run, max_new_tokens=2)
    assert result["answers"]
    assert all(a["prompt"].startswith("What is") for a in result["answers"])


def test_model_card_quotes_evaluation(lora_run: Path, tmp_path: Path) -> None:
    from engine.evaluate import evaluate_run
    from engine.export import export_run

    evaluate_run(lora_run, prompts=["Hi"], max_new_tokens=2)
    export_run(lora_run, tmp_path / "adapter")
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "evaluate: held-out loss base" in card


def test_evaluate_full_fine_tuning(small_model_dirs: dict[str, Path],  # noqa: F811
                                   tmp_path: Path) -> None:
    from engine.evaluate import evaluate_run

    run = train_run(small_model_dirs["llama"], tmp_path, "full", learning_rate=1e-3)
    result = evaluate_run(run, prompts=["Hi"], max_new_tokens=2)
    assert result["method"] == "full"
    assert result["tuned"]["loss"] != result["base"]["loss"]


def test_cli(lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 1 plus 1?\n\nWhat is 9 plus 9?\n")
    assert main(["evaluate", str(lora_run), "--prompts", str(prompts), "--json",
                 "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [a["prompt"] for a in result["answers"]] == ["What is 1 plus 1?", "What is 9 plus 9?"]
    assert main(["evaluate", str(lora_run), "--prompts", str(prompts), "--max-new-tokens",
                 "2"]) == 0
    text = capsys.readouterr().out
    assert "held-out loss" in text and "perplexity" in text and "» What is 9 plus 9?" in text
    assert main(["evaluate", str(lora_run), "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert main(["evaluate", str(tmp_path)]) == 2  # not a run folder


def test_cli_events_stdout(lora_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", str(lora_run), "--events-stdout", "--max-new-tokens", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert {"progress", "eval", "sample"} <= {x["type"] for x in lines}


@pytest.mark.parametrize("method", ["prompt", "adapter"])
def test_evaluate_methods_without_a_switch(method: str, lora_run: Path,
                                           small_model_dirs: dict[str, Path],  # noqa: F811
                                           tmp_path: Path) -> None:
    """Prompt tuning and bottleneck adapters get a separate base copy: the base loss is the
    same as any other run's on the same data."""
    from engine.evaluate import evaluate_run

    run = train_run(small_model_dirs["llama"], tmp_path, method, max_steps=4)
    result = evaluate_run(run, prompts=["Hi"], max_new_tokens=2)
    reference = json.loads((lora_run / "evaluation.json").read_text()) if (
        lora_run / "evaluation.json").is_file() else evaluate_run(lora_run, prompts=["Hi"],
                                                                  max_new_tokens=2)
    assert result["base"]["loss"] == pytest.approx(reference["base"]["loss"], rel=1e-5)
    assert result["tuned"]["loss"] != pytest.approx(result["base"]["loss"], rel=1e-6)


def test_user_error_is_an_event_for_the_gui(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(tmp_path / "nope"),
                           "--events-stdout"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["type"] == "error" and "not a run folder" in line
