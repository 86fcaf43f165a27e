"""The Method page's advice and numbers: a recommendation that does not echo the clicked row,
one unit (GiB), and the same job prediction as the Train page's gauges."""

from __future__ import annotations

import dataclasses
import re

from PySide6.QtCore import Qt

from engine.config import METHODS

ENGINE_WAIT_MS = 60_000

NOT_GIB = re.compile(r"\d\s*GB\b")  # "1.6 GB": a decimal unit where the engine reports GiB


def _method_page(qtbot, window, source: str):  # type: ignore[no-untyped-def]
    model = window.page("model")
    model.source_edit.setText(source)
    qtbot.mouseClick(model.use_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: model.info.get("source") == source, timeout=ENGINE_WAIT_MS)
    window.show_page("method")
    return window.page("method")


def _wait_new_advice(qtbot, advisor, old) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: advisor.result is not old and bool(advisor.result)
                    and bool(advisor.peak), timeout=ENGINE_WAIT_MS)


def test_recommendation_does_not_follow_the_clicked_row(qtbot, window, tiny_model) -> None:
    page = _method_page(qtbot, window, tiny_model)
    advisor = page.advisor
    old = advisor.result
    advisor.vram_spin.setValue(6.0)
    _wait_new_advice(qtbot, advisor, old)
    first = advisor.recommendation.text()
    assert first.startswith("Recommended:")
    texts = set()
    for name in ("qlora", "full", "prompt", "ia3"):
        old = advisor.result
        page.table.selectRow(list(METHODS).index(name))
        assert window.ctx.job.job.method.name == name
        _wait_new_advice(qtbot, advisor, old)
        texts.add(advisor.recommendation.text())
    assert texts == {first}  # the same advice whichever row is selected


def test_one_unit_and_the_same_prediction_as_the_train_page(qtbot, window, tiny_model) -> None:
    from engine.config import job_from_dict
    from gui.pages.qt_train_page import predicted_peak_gb
    from gui.widgets.units import gib

    page = _method_page(qtbot, window, tiny_model)
    advisor = page.advisor
    old = advisor.result
    advisor.vram_spin.setValue(8.0)
    _wait_new_advice(qtbot, advisor, old)
    assert advisor.vram_spin.suffix() == " GiB"
    for text in (advisor.gpu_label.text(), advisor.recommendation.text(),
                 advisor.job_peak.text(), advisor.status.text()):
        assert not NOT_GIB.search(text), text
    # The job's prediction on the Method page is the one the Train page's gauges mark.
    job = dataclasses.asdict(window.ctx.job.job)
    assert job_from_dict(job) == window.ctx.job.job
    train_page_peak = predicted_peak_gb(job, "cpu")
    assert train_page_peak is not None
    assert gib(train_page_peak) in advisor.job_peak.text()
    assert advisor.peak["device"] == "cpu"


def test_blurb_share_agrees_with_the_table(qtbot, window, tiny_model) -> None:
    page = _method_page(qtbot, window, tiny_model)
    page.table.selectRow(list(METHODS).index("lora"))
    assert "7B" in page.summary.text()  # the lesson's figure is named as such
    qtbot.waitUntil(lambda: "lora" in page.shares, timeout=ENGINE_WAIT_MS)
    measured = page.table.item(list(METHODS).index("lora"), 1).text()
    assert f"On this model: <b>{measured}</b>" in page.summary.text()
