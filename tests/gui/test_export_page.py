"""The Export page against real tiny runs: exports run as ``python -m engine export`` children.

A LoRA run is exported as an adapter and as a merged model into tmp_path; a prefix-tuning run
(trained for real: it cannot be merged) shows why before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QMessageBox

CHILD_MS = 240_000  # two export children, each importing torch, on a loaded 2-core machine


@pytest.fixture(scope="module")
def runs(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            train_tiny_run: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {m: train_tiny_run(tiny_llama_dir, root, m) for m in ("lora", "prefix")}


def _page(qtbot: Any, ctx: Any, runs_dir: Path) -> Any:
    from gui.pages.qt_export_page import QtExportPage

    ctx.job.set("output.runs_dir", str(runs_dir))
    page = QtExportPage(ctx)
    qtbot.addWidget(page)
    page.resize(1080, 700)
    page.show()
    qtbot.waitUntil(lambda: len(page.picker.runs) == 2, timeout=60_000)
    return page


def test_export_adapter_and_merged(qtbot: Any, ctx: Any, runs: dict[str, Path],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = _page(qtbot, ctx, runs["lora"].parent)
    page.picker.select(runs["lora"])
    assert not page.why.isVisible() and page.merged_box.isEnabled()
    out = tmp_path / "exports" / "tiny"
    page.out_edit.setText(str(out))
    page.merged_box.setChecked(True)
    commands = page.command.toPlainText().splitlines()
    assert commands == [
        f"python -m engine export {runs['lora'].resolve()} --out {out / 'adapter'}",
        f"python -m engine export {runs['lora'].resolve()} --out {out / 'merged'} --merge"]
    page.export_button.click()
    try:
        assert page.controller.state == "running" and page.cancel_button.isEnabled()
        qtbot.waitUntil(lambda: page.controller.state != "running", timeout=CHILD_MS)
        assert page.controller.state == "done", page.status.text()
        assert (out / "adapter" / "adapter_config.json").is_file()
        assert (out / "merged" / "model.safetensors").is_file()
        assert [r["kind"] for r in page.controller.results] == ["adapter", "merged"]
        text = page.result_view.toPlainText()
        assert "Adapter → " in text and "Merged 16-bit model → " in text
        assert "adapter_model.safetensors" in text and "model.safetensors" in text
        diff = page.controller.results[1]["max_logit_diff"]
        assert diff is not None and diff < 1e-4 and f"{diff:.2e}" in text
        assert "Done: 2 export(s) written." in page.status.text()
        opened: list[str] = []
        monkeypatch.setattr("gui.controllers.file_dialogs.QDesktopServices.openUrl",
                            lambda url: opened.append(url.toLocalFile()) or True)
        assert page.open_button.isEnabled()
        page.open_button.click()
        assert opened == [str(out)]
        # A second export into the same folder asks first; "No" starts nothing.
        asked: list[str] = []
        monkeypatch.setattr(QMessageBox, "question", lambda _p, title, _t: asked.append(
            title) or QMessageBox.StandardButton.No)
        page.export_button.click()
        assert asked == ["Replace the export?"] and page.controller.state == "done"
        assert all("--overwrite" in cmd for _, cmd in page.plan(overwrite=True))
    finally:
        page.shutdown()


def test_prefix_run_explains_why_it_cannot_merge(qtbot: Any, ctx: Any,
                                                 runs: dict[str, Path]) -> None:
    page = _page(qtbot, ctx, runs["lora"].parent)
    page.picker.select(runs["lora"])
    page.merged_box.setChecked(True)
    page.gguf_box.setChecked(True)
    page.picker.select(runs["prefix"])  # the choices are checked again when the run changes
    assert page.why.isVisible()
    assert page.why.text().startswith("Prefix tuning cannot be merged: prefix tuning learns")
    for box in (page.merged_box, page.gguf_box):
        assert not box.isEnabled() and not box.isChecked()
        assert "cannot be merged" in box.toolTip()
    assert not page.gguf_type.isEnabled()
    assert [t.name for t, _ in page.plan()] == ["adapter"]
    page.picker.select(runs["lora"])
    assert not page.why.isVisible() and page.merged_box.isEnabled()


def test_a_folder_of_the_users_files_is_never_offered_for_replacing(
        qtbot: Any, ctx: Any, runs: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    page = _page(qtbot, ctx, runs["lora"].parent)
    page.picker.select(runs["lora"])
    out = tmp_path / "mine"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "thesis.tex").write_text("years of work")
    page.out_edit.setText(str(out))
    told: list[dict[Path, str]] = []
    monkeypatch.setattr(page, "tell_cannot_replace", told.append)
    monkeypatch.setattr(QMessageBox, "question", lambda *_a: pytest.fail("asked to replace"))
    page.export_button.click()
    assert told == [{out / "adapter": "thesis.tex"}]
    assert page.controller.state != "running"
    assert (out / "adapter" / "thesis.tex").read_text() == "years of work"
    page.shutdown()


def test_gguf_size_is_shown_and_a_missing_quantizer_says_how_to_get_it(
        qtbot: Any, ctx: Any, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    page = _page(qtbot, ctx, runs["lora"].parent)
    page.picker.select(runs["lora"])
    page.gguf_box.setChecked(True)
    page.gguf_type.setCurrentIndex(page.gguf_type.findData("q8_0"))
    assert page.gguf_hint.isVisible()
    assert page.gguf_hint.text().startswith("the q8_0 GGUF file will be about ")
    assert page.export_button.isEnabled()
    monkeypatch.setattr("engine.export._quant.quantizer_available", lambda: False)
    monkeypatch.setattr("engine.export.quantizer_available", lambda: False)
    page.gguf_type.setCurrentIndex(page.gguf_type.findData("q4_k_m"))
    assert "pip install 'tunesmith[gguf-quant]'" in page.gguf_hint.text()
    assert not page.export_button.isEnabled()
    assert "--gguf-type q4_k_m" in page.command.toPlainText()
