"""Every page driven headless with the real engine on a tiny Llama, ending in a saved job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog

from engine.config import METHODS, load_job

ENGINE_WAIT_MS = 60_000  # the first engine call of a session imports transformers


def _use_model(qtbot, window, source: str):  # type: ignore[no-untyped-def]
    page = window.page("model")
    page.source_edit.setText(source)
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.info.get("source") == source, timeout=ENGINE_WAIT_MS)
    return page


def _use_data(qtbot, window, path: str):  # type: ignore[no-untyped-def]
    window.show_page("data")
    page = window.page("data")
    page.path_edit.setText(path)
    page.path_edit.editingFinished.emit()
    qtbot.waitUntil(lambda: page.report is not None and page.report.path == path,
                    timeout=ENGINE_WAIT_MS)
    return page


def test_model_page_shows_architecture_facts(qtbot, window, tiny_model) -> None:
    page = _use_model(qtbot, window, tiny_model)
    assert window.ctx.job.job.model.source == tiny_model
    facts = {k: label.text() for k, label in page.fact_labels.items()}
    assert facts["layers"] == "2" and facts["hidden_size"] == "32"
    assert facts["context"] == "256 tokens" and facts["license"] == "mit"
    assert facts["parameters"].startswith("1.6M")  # tied embeddings counted once


def test_model_page_catalog_and_defaults(qtbot, window) -> None:
    page = window.page("model")
    qtbot.waitUntil(lambda: page.table.rowCount() > 2, timeout=ENGINE_WAIT_MS)
    sources = [page.table.item(r, 0).data(Qt.ItemDataRole.UserRole)
               for r in range(page.table.rowCount())]
    assert sources[:2] == ["smollm2-135m-instruct", "minilm-l6"]
    assert "Qwen/Qwen2.5-0.5B-Instruct" in sources
    row = sources.index("Qwen/Qwen2.5-0.5B-Instruct")
    assert page.table.item(row, 2).text() == "32.8K"  # context length
    page.table.selectRow(row)
    assert window.ctx.job.job.model.source == "Qwen/Qwen2.5-0.5B-Instruct"
    qtbot.waitUntil(lambda: page.info.get("layers") == 24, timeout=ENGINE_WAIT_MS)
    assert page.fact_labels["license"].text() == "Apache-2.0"
    page.table.selectRow(1)
    assert window.ctx.job.job.task == "classify"  # the classification default sets the task


def test_model_page_reports_a_bad_source(qtbot, window, tmp_path) -> None:
    page = window.page("model")
    page.source_edit.setText(str(tmp_path))  # a folder without config.json
    page.use_button.click()
    qtbot.waitUntil(lambda: "config.json" in page.status.text(), timeout=ENGINE_WAIT_MS)
    assert page.fact_labels["layers"].text() == "—"


def test_data_page_preview_problems_and_histogram(qtbot, window, tiny_model, chat_file) -> None:
    _use_model(qtbot, window, tiny_model)
    page = _use_data(qtbot, window, chat_file)
    assert page.report.format == "messages"
    assert "detected" in page.detected_label.text()
    html = page.preview.toHtml()
    assert "Paris." in html and "What is the capital of France?" in html
    problems = [page.problems.item(i).text() for i in range(page.problems.count())]
    assert len(problems) == 2
    assert "line 4" in problems[0] and "line 5" in problems[1]
    assert sum(page.histogram.counts) == len(page.report.lengths) == 3
    assert "<b>0</b> of 3 rows" in page.length_summary.text()
    # A smaller max length: the long row would be truncated, and the line moves.
    page.length_form.editors["dataset.max_length"].setValue(48)
    qtbot.waitUntil(lambda: page.report.max_length == 48, timeout=ENGINE_WAIT_MS)
    assert page.report.truncated == 1
    assert "<b>1</b> of 3 rows" in page.length_summary.text()
    assert "truncated" in page.length_summary.text()
    assert page.histogram.max_line.value() == 48


def test_data_page_format_override_and_drop(qtbot, window, tiny_model, chat_file, tmp_path):
    _use_model(qtbot, window, tiny_model)
    page = _use_data(qtbot, window, chat_file)
    page.format_combo.setCurrentText("alpaca")
    qtbot.waitUntil(lambda: page.report is None or page.report.format == "alpaca",
                    timeout=ENGINE_WAIT_MS)
    assert window.ctx.job.job.dataset.format == "alpaca"
    page.format_combo.setCurrentText("auto")
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "Add 2 and 2.", "output": "4"}\n')
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(other))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    page.dropEvent(drop)
    assert window.ctx.job.job.dataset.path == str(other)
    qtbot.waitUntil(lambda: page.report is not None and page.report.path == str(other),
                    timeout=ENGINE_WAIT_MS)
    assert page.report.format == "alpaca" and page.report.rows == 1


def test_data_page_unreadable_file(qtbot, window, tmp_path) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [\n')
    window.show_page("data")
    page = window.page("data")
    page.path_edit.setText(str(bad))
    page.path_edit.editingFinished.emit()
    qtbot.waitUntil(lambda: page.problems.count() > 0 and page.report is None,
                    timeout=ENGINE_WAIT_MS)
    assert "broken.jsonl" in page.problems.item(0).text()


def test_method_page_methods_settings_advisor_and_map(qtbot, window, tiny_model) -> None:
    _use_model(qtbot, window, tiny_model)
    window.show_page("method")
    page = window.page("method")
    job = window.ctx.job
    assert page.table.rowCount() == len(METHODS) == 9
    qtbot.waitUntil(lambda: page.table.item(1, 1).text().endswith("%"), timeout=ENGINE_WAIT_MS)
    assert page.table.item(0, 1).text() == "100%"  # full fine-tuning
    page.table.selectRow(list(METHODS).index("dora"))
    assert job.job.method.name == "dora"
    assert page.form.editors["method.r"].isVisibleTo(page)
    assert not page.form.editors["method.num_virtual_tokens"].isVisibleTo(page)
    page.form.editors["method.r"].setValue(8)
    assert job.job.method.r == 8
    # The advisor: bars for every method against the VRAM line, and a recommendation.
    advisor = page.advisor
    advisor.vram_spin.setValue(6.0)
    qtbot.waitUntil(lambda: advisor.result.get("vram_gb") == 6.0, timeout=ENGINE_WAIT_MS)
    assert "No NVIDIA GPU" in advisor.gpu_label.text()
    assert {r.key for r in advisor.bars.rows} == set(METHODS)
    assert all(r.status in ("fits", "tight", "won't fit") for r in advisor.bars.rows)
    assert advisor.bars.vram == 6.0
    rec = advisor.result["recommendation"]
    assert rec["method"] in METHODS and "Recommended" in advisor.recommendation.text()
    advisor.apply_button.click()
    assert job.job.method.name == rec["method"]
    assert job.job.training.batch_size == rec["batch_size"]
    assert job.job.dataset.max_length == rec["seq_len"]
    # The architecture map: what LoRA trains, highlighted.
    page.table.selectRow(list(METHODS).index("lora"))
    amap = page.arch_map
    qtbot.waitUntil(lambda: any("q_proj" in n for n in amap.trained_names()),
                    timeout=ENGINE_WAIT_MS)
    trained = amap.trained_names()
    assert any("layers.1.mlp.down_proj" in n for n in trained)
    assert not any(n.endswith("embed_tokens") for n in trained)
    assert amap.tree.topLevelItem(0).text(3)  # the root shows its trained count


def test_method_page_prompt_tuning_trains_virtual_tokens(qtbot, window, tiny_model) -> None:
    _use_model(qtbot, window, tiny_model)
    window.show_page("method")
    page = window.page("method")
    page.table.selectRow(list(METHODS).index("prompt"))
    assert page.form.editors["method.num_virtual_tokens"].isVisibleTo(page)
    assert not page.form.editors["method.r"].isVisibleTo(page)
    qtbot.waitUntil(lambda: page.arch_map.result.get("trainable", 0) > 0
                    and page.arch_map.result.get("total", 0) > 0
                    and any("prompt_encoder" in n for n in page.arch_map.trained_names()),
                    timeout=ENGINE_WAIT_MS)


def test_hyperparameters_preset_advanced_and_save(qtbot, window, tmp_path, monkeypatch):
    window.show_page("hyperparameters")
    page = window.page("hyperparameters")
    job = window.ctx.job
    page.preset_combo.setCurrentText("vram-8gb")
    assert "8 GB" in page.preset_info.text()
    page.apply_preset_button.click()
    assert job.job.method.name == "qlora" and job.job.training.grad_accum == 8
    assert page.basic_form.editors["training.grad_accum"].value() == 8
    assert "2 × 8 = <b>16</b>" in page.summary.text()  # the effective batch follows the job
    assert page.advanced_scroll.isHidden()
    page.advanced_toggle.click()
    assert not page.advanced_scroll.isHidden()
    page.editor("training.seed").setValue(7)
    target = tmp_path / "saved.yaml"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    page.save_button.click()
    assert load_job(target).training.seed == 7
    assert page.command.command().endswith("saved.yaml")


@pytest.mark.parametrize("dark", [False, True])
def test_every_page_builds_in_both_themes(qtbot, window, qapp, tiny_model, dark: bool) -> None:
    from gui.pages.page_list import PAGES
    from gui.widgets.theme import apply_theme

    window.ctx.job.set("model.source", tiny_model)  # engine calls on a tiny model: fast
    apply_theme(qapp, dark=dark)
    for spec in PAGES:
        window.show_page(spec.key)
        assert window.stack.currentWidget() is window.page(spec.key)
    apply_theme(qapp, dark=False)


def test_empty_window_to_saved_job(qtbot, window, tiny_model, chat_file, tmp_path,
                                   monkeypatch) -> None:
    """The whole flow, page by page, as a user would walk it; then the file on disk."""
    job = window.ctx.job
    assert window.windowTitle() == "Tunesmith — untitled job"
    _use_model(qtbot, window, tiny_model)
    window.next_button.click()
    assert window.current_key() == "data"
    data = _use_data(qtbot, window, chat_file)
    data.length_form.editors["dataset.max_length"].setValue(128)
    window.next_button.click()
    method = window.page("method")
    method.table.selectRow(list(METHODS).index("lora"))
    method.form.editors["method.r"].setValue(4)
    alpha = method.form.editors["method.alpha"]
    alpha.setValue(8)
    alpha.editingFinished.emit()
    window.next_button.click()
    hyper = window.page("hyperparameters")
    hyper.basic_form.editors["name"].setText("tiny-chat")
    hyper.basic_form.editors["name"].editingFinished.emit()
    hyper.basic_form.editors["training.max_steps"].setValue(20)
    lr = hyper.basic_form.editors["training.learning_rate"]
    lr.lineEdit().setText("5e-4")
    lr.interpretText()
    lr.editingFinished.emit()
    target = tmp_path / "tiny-chat.yaml"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.save_action.trigger()
    saved = yaml.safe_load(Path(target).read_text())
    assert saved["name"] == "tiny-chat" and saved["task"] == "sft"
    assert saved["model"]["source"] == tiny_model
    assert saved["dataset"]["path"] == chat_file
    assert saved["dataset"]["format"] == "auto" and saved["dataset"]["max_length"] == 128
    assert saved["method"]["name"] == "lora"
    assert saved["method"]["r"] == 4 and saved["method"]["alpha"] == 8
    assert saved["training"]["max_steps"] == 20
    assert saved["training"]["learning_rate"] == pytest.approx(5e-4)
    assert load_job(target) == job.job
    assert window.windowTitle() == "Tunesmith — tiny-chat.yaml"
    assert window.page("train") is not None  # the next step opens


def test_preset_box_shows_only_an_applied_preset(qtbot, window) -> None:
    window.show_page("hyperparameters")
    page = window.page("hyperparameters")
    assert page.preset_combo.currentIndex() == -1 and page.applied_preset is None
    assert not page.apply_preset_button.isEnabled()
    page.preset_combo.setCurrentText("vram-8gb")
    assert "Not applied yet" in page.preset_info.text()
    page.apply_preset_button.click()
    assert page.applied_preset == "vram-8gb" and page.preset_combo.currentText() == "vram-8gb"
    assert "Not applied" not in page.preset_info.text()
    page.basic_form.editors["training.grad_accum"].setValue(3)  # off the preset's 8
    assert page.applied_preset is None and page.preset_combo.currentIndex() == -1
    assert "changed since preset vram-8gb" in page.preset_info.text()
