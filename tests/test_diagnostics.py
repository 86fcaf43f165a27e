"""engine.diagnostics: divergence and overfitting detectors, OOM retry settings, best checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import runs
from engine.diagnostics import (
    Diagnostics,
    advisor_retry_settings,
    best_checkpoint,
    describe_settings,
    keep_best_checkpoint,
    oom_retry_settings,
)


def _steps(losses: list[float], start: int = 1) -> list[ev.Step]:
    return [ev.Step(step=start + i, loss=x) for i, x in enumerate(losses)]


def test_steady_loss_gives_no_warning() -> None:
    diag = Diagnostics()
    assert diag.feed_all(_steps([2.0 - 0.01 * i for i in range(100)])) == []


def test_divergence_fires_once_above_three_times_the_median() -> None:
    diag = Diagnostics()
    warnings = diag.feed_all(_steps([1.0, 1.1, 0.9, 1.0, 1.05, 2.9, 3.5, 4.0, 5.0]))
    assert [w.code for w in warnings] == ["divergence"]
    assert "step 7" in warnings[0].message
    assert "moving median" in warnings[0].message


def test_divergence_needs_enough_history_and_rearms_after_recovery() -> None:
    diag = Diagnostics()
    assert diag.feed_all(_steps([1.0, 10.0, 1.0])) == []  # too few steps for a median
    diag = Diagnostics()
    losses = [1.0] * 6 + [5.0] + [1.0] * 3 + [6.0]
    assert [w.code for w in diag.feed_all(_steps(losses))] == ["divergence", "divergence"]


def test_a_steady_climb_is_divergence_too() -> None:
    """Loss 6 → 42 a little each step (lr 1.0, no clipping): the moving median follows the
    climb, so the jump rule never fires; the climb rule does, once."""
    climb = [6.0 + 36.0 * i / 39 for i in range(40)]
    warnings = Diagnostics().feed_all(_steps(climb))
    assert [w.code for w in warnings] == ["divergence"]
    assert "climbed" in warnings[0].message
    noisy_but_learning = [3.0, 3.4, 2.6, 3.1, 2.9] + [1.0 + 0.5 * (i % 3) for i in range(60)]
    assert Diagnostics().feed_all(_steps(noisy_but_learning)) == []


def test_the_engine_reports_divergence_on_the_cli_and_the_gui_does_not_repeat_it() -> None:
    import io

    from engine.diagnostics import with_diagnostics
    from engine.train_cli import ProgressBar

    stream = io.StringIO()
    events: list[ev.Event] = []
    bar = ProgressBar(stream)
    sink = with_diagnostics(lambda e: (events.append(e), bar(e)))
    sink(ev.RunStarted(diagnostics=True, max_steps=40))
    for step in _steps([6.0 + 36.0 * i / 39 for i in range(40)]):
        sink(step)
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert [w.code for w in warnings] == ["divergence"]
    assert "warning (divergence): " in stream.getvalue()
    # A reader of these events (the GUI) takes the engine's warnings and adds none of its own.
    assert Diagnostics().feed_all(events) == []
    assert Diagnostics().feed_all(e for e in events if not isinstance(e, ev.Warning)
                                  and not isinstance(e, ev.RunStarted))  # an older engine's run


def test_non_finite_loss_is_left_to_the_engine() -> None:
    diag = Diagnostics()
    assert diag.feed_all(_steps([1.0] * 6 + [float("nan"), float("inf")])) == []


def _run(evals: list[float], trains: list[float]) -> list[ev.Warning]:
    """One eval after each block of 5 steps at the given training loss."""
    diag = Diagnostics()
    out: list[ev.Warning] = []
    for i, (e, t) in enumerate(zip(evals, trains, strict=True)):
        out += diag.feed_all(_steps([t] * 5, start=5 * i + 1))
        out += diag.feed(ev.Eval(step=5 * (i + 1), eval_loss=e))
    return out


def test_overfitting_eval_rising_three_times_while_train_falls() -> None:
    warnings = _run([2.0, 1.5, 1.6, 1.7, 1.8, 1.9], [2.0, 1.6, 1.3, 1.1, 0.9, 0.7])
    assert [w.code for w in warnings] == ["overfitting"]
    assert "best was 1.5 at step 10" in warnings[0].message


def test_no_overfitting_when_both_rise_or_eval_rises_twice() -> None:
    assert _run([2.0, 2.1, 2.2, 2.3], [1.0, 1.1, 1.2, 1.3]) == []  # training loss rises too
    assert _run([2.0, 2.1, 2.2, 2.1, 2.2], [2.0, 1.8, 1.6, 1.4, 1.2]) == []


def test_oom_retry_settings_keep_the_effective_batch() -> None:
    job = {"training": {"batch_size": 8, "grad_accum": 2}, "method": {"name": "lora"}}
    out = oom_retry_settings(job)
    assert out["training"] == {"gradient_checkpointing": True, "batch_size": 4, "grad_accum": 4}
    assert out["method"] == {"name": "qlora"}
    assert "training.batch_size: 4" in describe_settings(out)
    cpu = oom_retry_settings({"training": {"batch_size": 1}, "dataset": {"max_length": 512}},
                             cuda=False)
    assert "method" not in cpu
    assert cpu["dataset"] == {"max_length": 256}


def _checkpoint(run_dir: Path, step: int, weight: str) -> None:
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "optimizer.pt").write_text("opt")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_text(weight)


def test_keep_best_checkpoint_copies_the_lowest_eval(tmp_path: Path) -> None:
    for step in (4, 8, 12):
        _checkpoint(tmp_path, step, f"w{step}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_text("final")
    (tmp_path / "adapter" / "tokenizer.json").write_text("tok")
    evals = [ev.Eval(step=4, eval_loss=2.0), ev.Eval(step=6, eval_loss=1.0),
             ev.Eval(step=12, eval_loss=3.0)]
    (tmp_path / runs.EVENTS_FILE).write_text("".join(ev.to_json(e) + "\n" for e in evals))
    assert best_checkpoint(tmp_path, evals) == tmp_path / "checkpoints" / "checkpoint-4"
    assert keep_best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-4"
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").read_text() == "w4"
    assert (adapter / "tokenizer.json").read_text() == "tok"
    assert not (adapter / "optimizer.pt").exists()
    assert json.loads((tmp_path / "best_checkpoint.json").read_text())["step"] == 4


def test_diagnostics_is_qt_free() -> None:
    code = "import sys, engine.diagnostics; print(any('PySide6' in m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_advisor_retry_settings_uses_a_safer_recommendation(monkeypatch: Any) -> None:
    import engine.advisor

    job = {"model": {"source": "smollm2-135m-instruct"}, "method": {"name": "lora"},
           "dataset": {"max_length": 512}, "training": {"batch_size": 8, "grad_accum": 1}}
    rec = {"method": "qlora", "batch_size": 2, "grad_accum": 4, "seq_len": 512,
           "gradient_checkpointing": True}
    monkeypatch.setattr(engine.advisor, "advise",
                        lambda *a, **k: {"device": "cuda", "recommendation": rec})
    assert advisor_retry_settings(job) == {
        "training": {"batch_size": 2, "grad_accum": 4, "gradient_checkpointing": True},
        "method": {"name": "qlora"}}
    same = {**rec, "method": "lora", "batch_size": 8, "gradient_checkpointing": False}
    monkeypatch.setattr(engine.advisor, "advise",
                        lambda *a, **k: {"device": "cuda", "recommendation": same})
    assert advisor_retry_settings(job) is None  # not safer than what ran out of memory
    monkeypatch.setattr(engine.advisor, "advise",
                        lambda *a, **k: {"device": "cpu", "recommendation": rec})
    assert advisor_retry_settings(job) is None  # no GPU: the heuristic stands
