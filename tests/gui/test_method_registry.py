"""The Method page is built from the engine's method registry, nothing else."""

from __future__ import annotations

import dataclasses

import pytest

from engine import methods

ENGINE_WAIT_MS = 60_000  # the first engine call of a session imports transformers
TWIN = "lora_twin"


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> methods.MethodSpec:
    spec = dataclasses.replace(methods.METHODS["lora"], name=TWIN, label="LoRA twin",
                               summary="LoRA under another name (a test method).")
    monkeypatch.setitem(methods.METHODS, TWIN, spec)
    return spec


def _rows(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [page.table.item(r, 0).text() for r in range(page.table.rowCount())]


def test_method_page_lists_a_registered_method(qtbot, ctx, twin) -> None:  # type: ignore[no-untyped-def]
    from gui.pages.qt_method_page import QtMethodPage

    page = QtMethodPage(ctx)
    qtbot.addWidget(page)
    assert _rows(page) == [spec.label for spec in methods.METHODS.values()]
    row = list(methods.METHODS).index(TWIN)
    page.table.selectRow(row)
    assert ctx.job.job.method.name == TWIN
    assert page.settings_group.title() == "LoRA twin settings"
    assert page.form.editors["method.r"].isVisibleTo(page)
    assert not page.form.editors["method.bottleneck_size"].isVisibleTo(page)
    # its share is counted by the engine like every other method's
    qtbot.waitUntil(lambda: page.table.item(row, 1).text().endswith("%"),
                    timeout=ENGINE_WAIT_MS)
    lora = list(methods.METHODS).index("lora")
    assert page.table.item(row, 1).text() == page.table.item(lora, 1).text()
    qtbot.waitUntil(lambda: bool(page.advisor.result), timeout=ENGINE_WAIT_MS)
    assert TWIN in {r.key for r in page.advisor.bars.rows}


def test_method_page_settings_follow_the_spec(qtbot, ctx) -> None:  # type: ignore[no-untyped-def]
    from gui.pages.qt_method_page import QtMethodPage

    page = QtMethodPage(ctx)
    qtbot.addWidget(page)
    keys = [k for k in page.form.editors if k != "method.name"]
    for r, (name, spec) in enumerate(methods.METHODS.items()):
        page.table.selectRow(r)
        shown = {k.rpartition(".")[2] for k in keys if page.form.editors[k].isVisibleTo(page)}
        assert shown == set(spec.settings), name
        assert page.no_settings.isVisibleTo(page) == (not spec.settings)
        assert page.no_settings.text() or spec.settings
