"""The Compare methods page on a saved comparison (no training here), and its Use button."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import compare


def _saved(folder: Path) -> dict[str, Any]:
    """A comparison folder as ``python -m engine compare`` writes it: two finished methods
    (numbers in the ranges a tiny run gives), one failed, one skipped."""
    numbers = {"full": (1_000_000, 1_000_000, 1.9, 300.0, 2.0), "lora": (8_000, 1_008_000,
                                                                          0.4, 900.0, 2.4)}
    rows = []
    for method, (trained, total, mem, speed, loss) in numbers.items():
        rows.append(compare.blank_row(
            method, status="completed", steps=2, trainable_params=trained, total_params=total,
            trainable_share=trained / total, peak_memory_gb=mem, memory_kind="cpu_peak_rss_growth",
            tokens_per_s=speed, wall_s=12.0, train_s=8.0, eval_s=4.0, final_train_loss=loss,
            held_out_loss=loss, perplexity=2.718 ** loss, base_loss=3.0,
            run_dir=f"runs/{method}"))
    rows.append(compare.blank_row("prefix", status="failed",
                                  reason="dataset.packing: on is not exact with method prefix"))
    rows.append(compare.blank_row("qlora", status="skipped", reason="the comparison was stopped"))
    reference = compare.add_quality(rows, 3.0)
    data = {"version": 1, "status": "stopped", "model": "tiny", "steps": 2, "batch_size": 4,
            "device": "cpu", "machine": {"cpu": "test CPU"}, "base_loss": 3.0,
            "reference": reference, "lesson": compare.LESSON_CLAIMS, "methods": rows}
    folder.mkdir(parents=True)
    compare.write_comparison(folder, data)
    return data


@pytest.fixture
def page(qtbot: Any, ctx: Any, tmp_path: Path) -> Any:
    from gui.pages.qt_compare_page import QtComparePage

    ctx.job.set("output.runs_dir", str(tmp_path / "runs"))
    _saved(tmp_path / "runs" / "compare-run-20250101-000000")
    widget = QtComparePage(ctx)
    qtbot.addWidget(widget)
    widget.resize(1280, 860)
    widget.show()
    yield widget
    widget.shutdown()


def _cell(page: Any, row: int, header: str) -> str:
    from gui.pages.qt_compare_page import COLUMNS

    col = [c[0] for c in COLUMNS].index(header)
    return str(page.table.item(row, col).text())


def test_reopens_a_saved_comparison(page: Any, tmp_path: Path) -> None:
    assert page.past.count() == 1  # found in the job's runs folder
    page.past.activated.emit(0)
    assert page.table.rowCount() == 4
    assert _cell(page, 0, "Method") == "Full fine-tuning"
    assert _cell(page, 1, "Quality") == "60%"  # (3 - 2.4) / (3 - 2.0)
    assert _cell(page, 0, "Quality") == "100%"
    assert _cell(page, 1, "Lesson quality") == "~95%" and _cell(page, 1, "Lesson share") == "~0.5%"
    assert _cell(page, 1, "Peak memory") == "0.40 GiB"
    assert "packing" in _cell(page, 2, "Status") and _cell(page, 2, "Held-out loss") == "—"
    assert "Full fine-tuning" in page.note.text()
    # The chart has one point per finished method on each plot.
    for scatter in page.chart.scatters.values():
        assert len(scatter.data) == 2
    xs = sorted(p["x"] for p in page.chart.scatters["peak_memory_gb"].data)
    assert xs == [0.4, 1.9]
    # The ticks and steps are the reopened comparison's, and so is the command.
    ticked = [m for m, box in page.method_boxes.items() if box.isChecked()]
    assert set(ticked) == {r["method"] for r in page.data["methods"]}
    assert page.steps.value() == 2
    assert f"--methods {','.join(ticked)} --steps 2" in page.command.text()


def test_use_this_method_sets_the_job(page: Any, ctx: Any) -> None:
    page.open_folder(page.past.itemData(0))
    assert ctx.job.get("method.name") == "lora"
    page.table.selectRow(2)  # the failed prefix run cannot be chosen
    assert not page.use_button.isEnabled()
    page.table.selectRow(0)
    assert page.use_button.isEnabled()
    page.use_button.click()
    assert ctx.job.get("method.name") == "full"
    assert "Full fine-tuning" in page.note.text()


def test_bad_folder_is_one_message(page: Any, tmp_path: Path) -> None:
    page.open_folder(tmp_path / "nothing")
    assert "does not exist" in page.status.text()
    assert page.table.rowCount() == 0


def test_command_follows_the_ticks(page: Any) -> None:
    page.method_boxes["ia3"].setChecked(True)
    page.steps.setValue(3)
    text = page.command.text()
    assert "compare" in text and "ia3" in text and "--steps 3" in text
    cmd = page.controller.command("job.yaml", "out", methods=page.chosen_methods(), steps=3)
    assert cmd[-4:] == ["--methods", ",".join(page.chosen_methods()), "--steps", "3"]


def test_live_progress_fills_each_row(page: Any) -> None:
    """The child's events (as the controller receives them) update the table row by row."""
    page._fill_rows([compare.blank_row(m, status="waiting") for m in ("lora", "ia3")])
    send = page.controller._on_message
    send({"type": "method_compared", "method": "lora", "index": 0, "total": 2,
          "status": "running", "row": compare.blank_row("lora", status="running")})
    send({"type": "progress", "stage": "compare", "current": 1, "total": 2,
          "message": "lora: step 1/2, loss 3.1000"})
    assert _cell(page, 0, "Status") == "running: step 1/2, loss 3.1000"
    assert _cell(page, 1, "Status") == "waiting"
    done = compare.blank_row("lora", status="completed", held_out_loss=2.5, perplexity=12.18)
    send({"type": "method_compared", "method": "lora", "index": 0, "total": 2,
          "status": "completed", "row": done})
    assert _cell(page, 0, "Status") == "completed" and _cell(page, 0, "Held-out loss") == "2.5000"


def test_methods_with_the_same_numbers_share_one_label() -> None:
    from gui.widgets.qt_compare_chart import grouped_labels

    pts = [("Prefix tuning", 2.0, 88.0), ("P-tuning v2", 1.9, 88.0), ("LoRA", 2.75, 84.0),
           ("Full fine-tuning", 3.4, 100.0)]
    labels = grouped_labels(pts, x_span=5.0, y_span=120.0)
    assert ("Prefix tuning, P-tuning v2", 2.0, 88.0) in labels
    assert {lab for lab, _x, _y in labels} == {"Prefix tuning, P-tuning v2", "LoRA",
                                               "Full fine-tuning"}
