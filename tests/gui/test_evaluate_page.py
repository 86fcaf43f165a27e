"""The Evaluate page against a real tiny run: the evaluation runs in a child process.

The run is trained here, in the test process, with ``engine.training.run_training`` on the
2-layer Llama (2 steps, seconds); the page then runs ``python -m engine evaluate`` (the child
imports torch: ~5-10 s on 2 busy cores, so waits are generous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHILD_MS = 180_000  # a child's imports, model load and work on a loaded 2-core machine


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            train_tiny_run: Any) -> Path:
    return train_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("evaluate"))


def _page(qtbot: Any, ctx: Any, run_dir: Path) -> Any:
    from gui.pages.qt_evaluate_page import QtEvaluatePage

    ctx.job.set("output.runs_dir", str(run_dir.parent))
    page = QtEvaluatePage(ctx)
    qtbot.addWidget(page)
    page.resize(1080, 700)
    page.show()
    qtbot.waitUntil(lambda: page.picker.run_dir() is not None, timeout=60_000)
    assert page.picker.run_dir() == run_dir.resolve()
    return page


def test_evaluate_shows_base_and_tuned(qtbot: Any, ctx: Any, lora_run: Path) -> None:
    page = _page(qtbot, ctx, lora_run)
    page.max_tokens.setValue(3)
    page.prompts.setText("Hello there | What is 2 plus 2?")
    page.evaluate_button.click()
    try:
        assert page.controller.state == "running"
        assert not page.evaluate_button.isEnabled() and page.cancel_button.isEnabled()
        assert page.progress.isVisible()
        qtbot.waitUntil(lambda: page.controller.state != "running", timeout=CHILD_MS)
        assert page.controller.state == "done", page.status.text()
        base = page.scores.item(0, 0).text()
        tuned = page.scores.item(0, 1).text()
        assert float(base) > 0 and float(tuned) > 0  # held-out losses, base and tuned
        assert float(page.scores.item(1, 1).text()) > 1  # perplexity
        assert page.scores.item(0, 2).text().endswith("%")
        assert page.result["base"]["loss"] == pytest.approx(float(base), abs=1e-4)
        text = page.answers.toPlainText()
        assert "Hello there" in text and "What is 2 plus 2?" in text
        assert "--max-new-tokens 3" in page.command.toPlainText()
        assert page.cancel_button.isEnabled() is False and not page.progress.isVisible()
    finally:
        page.shutdown()


def test_cancel_ends_the_child(qtbot: Any, ctx: Any, lora_run: Path) -> None:
    page = _page(qtbot, ctx, lora_run)
    page.evaluate_button.click()
    proc = page.controller.child.proc
    page.cancel_button.click()
    qtbot.waitUntil(lambda: page.controller.state == "cancelled", timeout=30_000)
    assert proc is not None and proc.poll() is not None
    assert page.status.text() == "Cancelled." and page.evaluate_button.isEnabled()


def test_classification_result_shows_metrics_and_confusion_matrix(qtbot: Any, ctx: Any,
                                                                  tmp_path: Path) -> None:
    """The view of a classify run's evaluation.json (the engine's own format, as written by
    engine.evaluate for a classify run; its child is covered by tests/test_evaluate.py)."""
    from engine.classify import classification_metrics
    from gui.pages.qt_evaluate_page import QtEvaluatePage

    ctx.job.set("output.runs_dir", str(tmp_path / "runs"))
    page = QtEvaluatePage(ctx)
    qtbot.addWidget(page)
    metrics = classification_metrics([0, 1, 1, 2, 2, 0], [0, 1, 2, 2, 2, 1],
                                     ["billing", "bug", "praise"])
    page._on_result({"task": "classify", "method": "lora", "eval_rows": 6, "tuned": metrics,
                     "note": "the base model has no trained classifier head", "elapsed_s": 1.0})
    assert page.scores.verticalHeaderItem(0).text() == "Accuracy"
    assert page.scores.item(0, 1).text() == f"{metrics['accuracy']:.3f}"
    assert page.scores.item(1, 1).text() == f"{metrics['macro_f1']:.3f}"
    assert page.scores.item(0, 0).text() == "—"  # no base score: the head is new
    assert not page.matrix.isHidden() and page.matrix.rowCount() == 3
    assert page.matrix.verticalHeaderItem(2).text() == "praise"
    assert page.matrix.horizontalHeaderItem(1).text() == "→ bug"
    assert [[page.matrix.item(i, j).text() for j in range(3)] for i in range(3)] == \
        [["1", "0", "0"], ["1", "1", "0"], ["0", "1", "2"]]
    assert "no trained classifier head" in page.note.text()
    page.shutdown()
