"""The resource advisor: detected GPUs (or a VRAM to plan for), predicted memory per method
as bars against the VRAM line, and the recommendation with an Apply button."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QWidget

from engine.methods import METHODS
from gui.controllers import engine_calls
from gui.widgets.qt_memory_bars import MemoryRow, QtMemoryBars, status_for
from gui.widgets.qt_widgets import card
from gui.widgets.theme import WONT_FIT
from gui.widgets.units import UNIT, gib, to_gib

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

ADVISE_KEYS = {"", "model.source", "method.name", "method.r", "method.target_modules",
               "method.double_quant", "method.bottleneck_size", "method.num_virtual_tokens",
               "dataset.max_length", "training.batch_size", "training.grad_accum",
               "training.optimizer", "training.gradient_checkpointing"}
JOB_PEAK_KEYS = {"training.device", "training.precision", "model.attn_implementation",
                 "method.alpha", "method.dropout", "method.prefix_projection"}
DEFAULT_PLAN_GB = 12.0


class QtAdvisor(QWidget):
    method_clicked = Signal(str)

    def __init__(self, ctx: AppContext, labels: dict[str, str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks, self.settings = ctx.job, ctx.tasks, ctx.settings
        self.labels = labels or {}
        self.result: dict[str, Any] = {}
        self.gpus: list[dict[str, Any]] = []
        group, inner = card("Resource advisor")
        top = QHBoxLayout()
        self.gpu_label = QLabel("Looking for GPUs…")
        self.gpu_label.setWordWrap(True)
        self.vram_spin = QDoubleSpinBox()
        self.vram_spin.setRange(1, 1024)
        self.vram_spin.setDecimals(1)
        self.vram_spin.setSuffix(f" {UNIT}")
        self.vram_spin.setKeyboardTracking(False)
        self.vram_spin.setToolTip("GPU memory to plan for: another card, or less than you have")
        self.vram_spin.setValue(float(self.settings.value("advisor/vram_gb", DEFAULT_PLAN_GB)))
        self.vram_spin.valueChanged.connect(self._on_vram_changed)
        top.addWidget(self.gpu_label, 1)
        top.addWidget(QLabel("Plan for"))
        top.addWidget(self.vram_spin)
        inner.addLayout(top)
        self.bars = QtMemoryBars()
        self.bars.row_clicked.connect(self.method_clicked)
        inner.addWidget(self.bars)
        self.status = QLabel()
        self.status.setWordWrap(True)
        inner.addWidget(self.status)
        self.job_peak = QLabel()
        self.job_peak.setWordWrap(True)
        self.job_peak.setToolTip("The same prediction the Train page's gauges mark and the "
                                 "run's memory check compares with")
        inner.addWidget(self.job_peak)
        self.peak: dict[str, Any] = {}
        rec = QHBoxLayout()
        self.recommendation = QLabel()
        self.recommendation.setWordWrap(True)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Set the method, batch size, accumulation, sequence "
                                     "length and checkpointing the advisor recommends")
        self.apply_button.setEnabled(False)
        self.apply_button.clicked.connect(self._on_apply)
        rec.addWidget(self.recommendation, 1)
        rec.addWidget(self.apply_button)
        inner.addLayout(rec)
        inner.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(group)
        self._debounce = QTimer(self, singleShot=True, interval=300)
        self._debounce.timeout.connect(self._on_advise)
        self.job.changed.connect(self._on_job_changed)
        self.tasks.submit("gpu_status", "Looking for GPUs…", engine_calls.gpu_status,
                          self._on_gpus)
        self.bars.set_selected(self.job.job.method.name)

    # ------------------------------------------------------------------ GPUs
    def _on_gpus(self, status: dict[str, Any]) -> None:
        self.gpus = list(status.get("gpus") or [])
        if not self.gpus:
            self.gpu_label.setText("<b>No NVIDIA GPU</b> found on this machine — plan for "
                                   "the card you will train on:")
            self.gpu_label.setToolTip(status.get("reason", ""))
        else:
            self.gpu_label.setText(" · ".join(_gpu_text(g) for g in self.gpus))
            total = _gb(self.gpus[0].get("total_gb") or self.gpus[0].get("memory_total"))
            if total and self.settings.value("advisor/vram_gb") is None:
                self.vram_spin.setValue(round(total, 1))
        self._debounce.start()

    # ------------------------------------------------------------------ advice
    def _on_job_changed(self, key: str) -> None:
        if key in ("", "method.name"):
            self.bars.set_selected(self.job.job.method.name)
        if key in ADVISE_KEYS or key in JOB_PEAK_KEYS:
            self._debounce.start()

    def _on_vram_changed(self, value: float) -> None:
        self.settings.set_value("advisor/vram_gb", value)
        self._debounce.start()

    def request(self) -> None:
        self._on_advise()

    def _on_advise(self) -> None:
        job = self.job.job
        m = job.method
        # No "method": the recommendation is the advisor's pick for this model, job and GPU,
        # not a restatement of the row the user clicked.
        kwargs = {"vram_gb": self.vram_spin.value(),
                  "seq_len": job.dataset.max_length, "batch_size": job.training.batch_size,
                  "grad_accum": job.training.grad_accum, "optimizer": job.training.optimizer,
                  "gradient_checkpointing": job.training.gradient_checkpointing,
                  "r": m.r, "target_modules": tuple(m.target_modules),
                  "bottleneck_size": m.bottleneck_size,
                  "num_virtual_tokens": m.num_virtual_tokens}
        source = job.model.source
        self.status.setText("Predicting memory…")
        self.tasks.submit("advise", "Predicting memory per method…",
                          lambda: engine_calls.advise(source, **kwargs),
                          self._on_advice, self._on_advice_failed)
        snapshot = copy.deepcopy(job)  # the worker must not read a job the user edits
        self.tasks.submit("job_peak", "Predicting this job's peak memory…",
                          lambda: engine_calls.job_peak(snapshot), self._on_job_peak,
                          self._on_job_peak_failed)

    def _on_job_peak(self, peak: dict[str, Any]) -> None:
        self.peak = peak
        self.job_peak.setText(job_peak_text(peak, self.job.job.method.name,
                                            self.labels))

    def _on_job_peak_failed(self, exc: BaseException) -> None:
        self.peak = {}
        self.job_peak.setText("")

    def _on_advice(self, result: dict[str, Any]) -> None:
        self.result = result
        vram = float(result.get("vram_gb") or self.vram_spin.value())
        rows = []
        for name in METHODS:
            m = result.get("methods", {}).get(name)
            if m:
                rows.append(_memory_row(name, self.labels.get(name, name), m, vram))
        self.bars.set_rows(rows, vram)
        self.status.setText("Peak memory on the planned GPU — bar: expected, whisker: "
                            "low–high. Click a row to choose.")
        rec = result.get("recommendation") or {}
        self.recommendation.setText(_recommendation_text(rec, self.labels))
        self.apply_button.setEnabled(bool(rec.get("method")))

    def _on_advice_failed(self, exc: BaseException) -> None:
        self.result = {}
        self.bars.set_rows([], 0)
        self.apply_button.setEnabled(False)
        self.recommendation.setText("")
        if isinstance(exc, ModuleNotFoundError | ImportError):
            self.status.setText("The resource advisor is not available in this build yet.")
            return
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        self.status.setText(f"<span style='color:{WONT_FIT}'>{message}</span>")

    def _on_apply(self) -> None:
        rec = self.result.get("recommendation") or {}
        update: dict[str, Any] = {"method": {"name": rec["method"]}, "training": {}}
        for key in ("batch_size", "grad_accum", "gradient_checkpointing"):
            if rec.get(key) is not None:
                update["training"][key] = rec[key]
        if rec.get("seq_len"):
            update["dataset"] = {"max_length": int(rec["seq_len"])}
        self.job.update(update)


_gb = to_gib


def job_peak_text(peak: dict[str, Any], method: str, labels: dict[str, str]) -> str:
    """"This job (LoRA) on the CPU: predicted peak 2.24 GiB" -- the Train page's figure."""
    where = "the GPU" if peak.get("device") == "cuda" else "the CPU"
    return (f"This job ({labels.get(method, method)}) on {where}: predicted peak "
            f"<b>{gib(peak.get('expected_gb'))}</b>, as the Train page and the memory check "
            f"say.")


def _gpu_text(gpu: dict[str, Any]) -> str:
    total = _gb(gpu.get("total_gb") or gpu.get("memory_total"))
    free = _gb(gpu.get("free_gb") or gpu.get("memory_free"))
    return f"<b>{gpu.get('name', 'GPU')}</b> · {gib(total, 1)} ({gib(free, 1)} free)"


def _memory_row(name: str, label: str, m: dict[str, Any], vram: float) -> MemoryRow:
    low, expected, high = (float(m.get(k) or 0) for k in ("low_gb", "expected_gb", "high_gb"))
    fits = m.get("fits")
    status = fits if fits in ("fits", "tight", "won't fit") else status_for(
        low, expected, high, vram)
    return MemoryRow(name, label, low, expected, high, status)


def _recommendation_text(rec: dict[str, Any], labels: dict[str, str]) -> str:
    if not rec.get("method"):
        return rec.get("reason") or ""
    ckpt = "on" if rec.get("gradient_checkpointing") else "off"
    settings = (f"batch {rec.get('batch_size')} × accumulation {rec.get('grad_accum')}, "
                f"{rec.get('seq_len')} tokens, checkpointing {ckpt}")
    name = labels.get(rec["method"], rec["method"])
    return (f"Recommended: <b>{name}</b> — {settings}. "
            f"<span>{rec.get('reason', '')}</span>")
