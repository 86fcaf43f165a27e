"""Resource gauges at 1 Hz: per-GPU memory (with the advisor's predicted peak), utilisation,
temperature and power; system RAM and CPU; the training process's own memory.

Readings come from ``engine.telemetry`` on a :class:`TelemetrySampler` thread (an NVML query
takes ~100 ms where there is no driver, too slow for the GUI thread).
"""

from __future__ import annotations

import math
import time
from typing import Any

from PySide6.QtCore import QObject, QRectF, Qt, QThread, Signal
from PySide6.QtGui import QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from engine import events as ev
from gui.controllers.run_controller import RunController
from gui.widgets.units import gib

INTERVAL_MS = 1000
GPU_RETRY_S = 60.0  # when NVML answered with no GPU, look again this often
NO_DRIVER = ("LibraryNotFound", "not installed")  # gpu_status() reasons that will not change


def read_telemetry(with_gpus: bool) -> dict[str, Any]:
    from engine.telemetry import gpu_status, read_system_stats

    out: dict[str, Any] = {"system": read_system_stats(), "time": time.time()}
    if with_gpus:
        out.update(gpu_status())
    return out


class TelemetrySampler(QThread):
    """Emits ``reading(dict)`` every ``interval_ms``: ``{"system", "gpus"?, "reason"?}``."""

    reading = Signal(object)  # dict

    def __init__(self, interval_ms: int = INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms

    def run(self) -> None:
        next_gpu_check = 0.0
        while not self.isInterruptionRequested():
            now = time.monotonic()
            data = read_telemetry(with_gpus=now >= next_gpu_check)
            if "gpus" in data and not data["gpus"]:
                # No NVIDIA GPU: don't ask every second (a failed NVML load holds the GIL for
                # ~0.1 s). Without a driver library at all, don't ask again this session.
                no_driver = any(w in data.get("reason", "") for w in NO_DRIVER)
                next_gpu_check = math.inf if no_driver else now + GPU_RETRY_S
            self.reading.emit(data)
            end = now + self.interval_ms / 1000
            while not self.isInterruptionRequested() and time.monotonic() < end:
                self.msleep(20)

    def stop(self) -> None:
        self.requestInterruption()
        self.wait()


class QtMemoryBar(QWidget):
    """A horizontal bar: used / total, with an optional marker at a predicted peak."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.used, self.total, self.peak = 0.0, 0.0, None
        self.setMinimumHeight(16)
        self.setMaximumHeight(16)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, used: float, total: float, peak: float | None = None) -> None:
        self.used, self.total, self.peak = used, total, peak
        self.update()

    def fraction(self) -> float:
        return min(1.0, self.used / self.total) if self.total > 0 else 0.0

    def paintEvent(self, _event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        pal = self.palette()
        p.setPen(QPen(pal.color(QPalette.ColorRole.Mid)))
        p.setBrush(pal.color(QPalette.ColorRole.Base))
        p.drawRoundedRect(rect, 3, 3)
        frac = self.fraction()
        color = QColor(60, 160, 90) if frac < 0.75 else QColor(220, 150, 30) if frac < 0.92 \
            else QColor(210, 60, 50)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(color)
        p.drawRoundedRect(QRectF(rect.x(), rect.y(), rect.width() * frac, rect.height()), 3, 3)
        if self.peak is not None and self.total > 0:
            x = rect.x() + rect.width() * min(1.0, self.peak / self.total)
            p.setPen(QPen(pal.color(QPalette.ColorRole.Text), 2, Qt.PenStyle.DashLine))
            p.drawLine(int(x), 0, int(x), self.height())
        p.end()


class _Gauge(QWidget):
    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel(title)
        self.label.setWordWrap(True)
        self.bar = QtMemoryBar()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)


class QtGauges(QWidget):
    """Gauges fed by a :class:`TelemetrySampler` and the run's step events."""

    def __init__(self, sampler: TelemetrySampler, controller: RunController,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sampler, self.controller = sampler, controller
        self.predicted_peak_gb: float | None = None
        self._memory: dict[str, Any] = {}
        self.readings = 0
        self.gpu_note = QLabel("Looking for NVIDIA GPUs…")
        self.gpu_note.setWordWrap(True)
        self.gpu_box = QVBoxLayout()
        self.gpu_gauges: list[_Gauge] = []
        self.ram = _Gauge("System RAM")
        self.cpu = _Gauge("CPU")
        self.process = QLabel("Training process: not running")
        self.process.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.gpu_note)
        layout.addLayout(self.gpu_box)
        layout.addWidget(self.ram)
        layout.addWidget(self.cpu)
        layout.addWidget(self.process)
        layout.addStretch(1)
        sampler.reading.connect(self._on_reading)
        controller.events.connect(self._on_events)
        controller.reset.connect(self._on_reset)

    def set_predicted_peak(self, gb: float | None) -> None:
        """The advisor's predicted peak: a marker on each GPU bar, a number for the CPU."""
        self.predicted_peak_gb = gb
        for gauge in self.gpu_gauges:
            gauge.bar.peak = gb
            gauge.bar.update()
        self._show_process()

    # ------------------------------------------------------------------ telemetry
    def _on_reading(self, data: dict[str, Any]) -> None:
        self.readings += 1
        if "gpus" in data:
            self._show_gpus(data["gpus"], data.get("reason", ""))
        system = data["system"]
        self.ram.bar.set_values(system["ram_used_gb"], system["ram_total_gb"])
        self.ram.label.setText(f"System RAM  {system['ram_used_gb']:.1f} / "
                               f"{system['ram_total_gb']:.1f} GiB ({system['ram_percent']:.0f}%)")
        cpu = float(system.get("cpu_percent") or 0.0)
        self.cpu.bar.set_values(cpu, 100.0)
        self.cpu.label.setText(f"CPU  {cpu:.0f}% of {system['cpu_count']} cores")

    def _show_gpus(self, gpus: list[dict[str, Any]], reason: str) -> None:
        if not gpus:
            self.gpu_note.setText("<b>No NVIDIA GPU found</b> — training runs on the CPU "
                                  "(or Apple MPS); RAM and CPU stay live below.")
            self.gpu_note.setToolTip(reason)
            self.gpu_note.show()
        else:
            self.gpu_note.hide()
        while len(self.gpu_gauges) < len(gpus):
            gauge = _Gauge("GPU")
            gauge.bar.peak = self.predicted_peak_gb
            self.gpu_gauges.append(gauge)
            self.gpu_box.addWidget(gauge)
        for gauge, gpu in zip(self.gpu_gauges, gpus, strict=False):
            gauge.bar.set_values(gpu["used_gb"], gpu["total_gb"], self.predicted_peak_gb)
            gauge.label.setText(_gpu_text(gpu, self.predicted_peak_gb))

    # ------------------------------------------------------------------ the run's own memory
    def _on_reset(self, _run_dir: str = "") -> None:
        self.predicted_peak_gb = None
        self._memory = {}
        self.process.setText("Training process: starting")

    def _on_events(self, batch: list[ev.Event]) -> None:
        step = next((e for e in reversed(batch) if isinstance(e, ev.Step)), None)
        if step is not None and step.memory:
            self._memory = step.memory
            self._show_process()

    def _show_process(self) -> None:
        memory = self._memory
        text = _process_text(memory) if memory else "Training process: no step yet"
        if self.predicted_peak_gb is not None:
            text += f" · advisor's predicted peak {gib(self.predicted_peak_gb)}"
        self.process.setText(text)


def _gpu_text(gpu: dict[str, Any], peak: float | None) -> str:
    parts = [f"GPU {gpu['index']}  {gpu['name']}",
             f"{gpu['used_gb']:.1f} / {gpu['total_gb']:.1f} GiB"]
    if peak is not None:
        parts.append(f"predicted peak {gib(peak)}")
    if gpu.get("utilization_pct") is not None:
        parts.append(f"util {gpu['utilization_pct']}%")
    if gpu.get("temperature_c") is not None:
        parts.append(f"{gpu['temperature_c']} °C")
    if gpu.get("power_w") is not None:
        limit = f" / {gpu['power_limit_w']:.0f}" if gpu.get("power_limit_w") else ""
        parts.append(f"{gpu['power_w']:.0f}{limit} W")
    return " · ".join(parts)


def _process_text(memory: dict[str, Any]) -> str:
    if memory.get("kind") == "cuda":
        return (f"Training process (CUDA): {memory.get('allocated_gb', 0):.2f} GiB allocated, "
                f"{memory.get('reserved_gb', 0):.2f} reserved, peak "
                f"{memory.get('peak_reserved_gb', 0):.2f}")
    return (f"Training process (CPU): {memory.get('rss_gb', 0):.2f} GiB resident, peak "
            f"{memory.get('peak_rss_gb', 0):.2f}")
