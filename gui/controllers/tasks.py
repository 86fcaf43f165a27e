"""Runs heavy engine calls on worker threads and hands results back on the GUI thread.

Each submission names a *channel* ("model_info", "advise", ...); only the newest result of a
channel is delivered, so a slow answer about an old model never overwrites a newer one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal


class _Signals(QObject):
    done = Signal(int, object)
    failed = Signal(int, object)


class _Runnable(QRunnable):
    def __init__(self, ident: int, fn: Callable[[], Any], signals: _Signals,
                 is_current: Callable[[int], bool]) -> None:
        super().__init__()
        self._ident, self._fn, self._signals = ident, fn, signals
        self._is_current = is_current

    def run(self) -> None:
        if not self._is_current(self._ident):  # a newer request on its channel is queued
            self._signals.done.emit(self._ident, None)
            return
        try:
            result = self._fn()
        except Exception as exc:  # delivered to the view as an error message
            self._signals.failed.emit(self._ident, exc)
            return
        self._signals.done.emit(self._ident, result)


@dataclass
class _Pending:
    channel: str
    message: str
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None] | None


class TaskRunner(QObject):
    """``busy_changed(busy, message)`` tells the window to show its busy indicator.

    One worker thread by default: transformers' lazy imports are not thread-safe, and the
    engine calls are CPU-bound anyway.
    """

    busy_changed = Signal(bool, str)

    def __init__(self, parent: QObject | None = None, threads: int = 1) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(threads)
        self._signals = _Signals(self)
        self._signals.done.connect(self._on_done)
        self._signals.failed.connect(self._on_failed)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._latest: dict[str, int] = {}
        self._closed = False
        self._held: list[_Runnable] | None = None

    def hold(self) -> None:
        """Queue tasks without running them (until :meth:`release`): keeps the worker's heavy
        imports from competing with the window's first paint for the CPU and the GIL."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for runnable in held:
            self._pool.start(runnable)

    def close(self) -> None:
        """Accept no new tasks and drop the queued ones; a running one finishes on its own."""
        self._closed = True
        self._held = None
        self._pool.clear()

    def shutdown(self, msecs: int = 30000) -> bool:
        """:meth:`close`, then wait for the running task (tests; app quit waits less)."""
        self.close()
        return self._pool.waitForDone(msecs)

    def submit(self, channel: str, message: str, fn: Callable[[], Any],
               on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None] | None = None) -> int:
        if self._closed:
            return 0
        ident = next(self._ids)
        self._pending[ident] = _Pending(channel, message, on_done, on_error)
        self._latest[channel] = ident
        runnable = _Runnable(ident, fn, self._signals, self._is_current)
        if self._held is not None:
            self._held.append(runnable)
        else:
            self._pool.start(runnable)
        self.busy_changed.emit(True, message)
        return ident

    def _is_current(self, ident: int) -> bool:
        # Called from the worker thread: a dict read, atomic under the GIL.
        pending = self._pending.get(ident)
        return pending is not None and self._latest.get(pending.channel) == ident

    def is_busy(self, channel: str | None = None) -> bool:
        return any(channel in (None, p.channel) for p in self._pending.values())

    def message(self) -> str:
        return next(iter(self._pending.values())).message if self._pending else ""

    def wait(self, msecs: int = 30000) -> bool:
        return self._pool.waitForDone(msecs)

    def _finish(self, ident: int) -> _Pending | None:
        pending = self._pending.pop(ident, None)
        self.busy_changed.emit(bool(self._pending), self.message())
        if pending is None or self._latest.get(pending.channel) != ident:
            return None  # superseded by a newer request on the same channel
        return pending

    def _on_done(self, ident: int, result: object) -> None:
        pending = self._finish(ident)
        if pending is not None and _alive(pending.on_done):
            pending.on_done(result)

    def _on_failed(self, ident: int, exc: object) -> None:
        pending = self._finish(ident)
        if pending is not None and pending.on_error is not None and _alive(pending.on_error):
            pending.on_error(exc)  # type: ignore[arg-type]


def _alive(callback: Callable[..., Any]) -> bool:
    """False when the callback's view was deleted while its task ran (window closed)."""
    owner = getattr(callback, "__self__", None)
    return not isinstance(owner, QObject) or shiboken6.isValid(owner)
