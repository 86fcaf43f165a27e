"""Controllers for the Evaluate, Chat and Export pages: one engine child each, JSON lines in.

Each controller (a QObject on the GUI thread) starts ``python -m engine <verb> ...`` — the same
command a user could type — and an :class:`EngineChild` whose reader threads turn the child's
stdout lines into dicts, delivered as Qt signals on the GUI thread. Views connect to the
controllers, never to the threads. Unlike a training run, these children belong to the window:
their stdout is a pipe, Cancel kills them, and every one is ended on ``app.aboutToQuit``.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal

from engine import events as ev
from engine import runs
from engine.launch import engine_command

STDERR_TAIL = 40  # stderr lines kept to explain a failure
CLOSE_GRACE_MS = 3000  # after closing the chat's stdin, the child gets this long to exit


class _LineReader(QThread):
    """Reads one of the child's streams to its end; JSON objects go out as ``message``."""

    message = Signal(object)  # dict
    text = Signal(str)  # a line that is not a JSON object

    def __init__(self, stream: IO[bytes], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._stream = stream
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

    def run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            data = ev.json_line(line)
            if data is not None:
                self.message.emit(data)
            elif line.strip():
                self.tail.append(line.split("\r")[-1])
                self.text.emit(line)


class EngineChild(QObject):
    """One ``python -m engine`` child with a reader thread per output stream.

    ``message(dict)`` per event line, ``log(str)`` per other line, ``exited(code)`` once both
    streams have ended and the process is gone (negative: killed by a signal).
    """

    message = Signal(object)
    log = Signal(str)
    exited = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancelled = False
        self._readers: list[_LineReader] = []

    def start(self, command: list[str], *, stdin: bool = False) -> None:
        if self.running():
            raise RuntimeError("the engine child is still running")
        self.cancelled = False
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=os.getcwd())
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [_LineReader(self.proc.stdout), _LineReader(self.proc.stderr)]
        self._readers[0].message.connect(self._on_message)
        self._readers[1].message.connect(self._on_message)
        for reader in self._readers:
            reader.text.connect(self._on_text)
            reader.finished.connect(self._on_reader_finished)
            reader.start()

    def running(self) -> bool:
        return self.proc is not None and (self.proc.poll() is None or bool(self._readers))

    def stderr_tail(self) -> list[str]:
        return list(self._readers[1].tail) if len(self._readers) > 1 else []

    def write(self, data: dict[str, Any]) -> bool:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return False
        try:
            proc.stdin.write((json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8"))
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def close_stdin(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def kill(self) -> None:
        """End the child now (Cancel); ``exited`` follows once its streams close."""
        if self.proc is not None and self.proc.poll() is None:
            self.cancelled = True
            self.proc.kill()

    def shutdown(self, grace_s: float = 0.0) -> None:
        """App quit and page teardown: close stdin, wait ``grace_s``, kill, join the readers."""
        if self.proc is None:
            return
        self.close_stdin()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.wait()
        self._finish()

    def _on_message(self, data: dict[str, Any]) -> None:
        self.message.emit(data)

    def _on_text(self, line: str) -> None:
        self.log.emit(line)

    def _on_reader_finished(self) -> None:
        if all(r.isFinished() for r in self._readers):
            self._finish()

    def _finish(self) -> None:
        if not self._readers or self.proc is None:
            return
        code = self.proc.wait()
        for reader in self._readers:
            reader.deleteLater()
        self._readers = []
        self.exited.emit(code)


def _failure(child: EngineChild, error: dict[str, Any] | None, code: int) -> str:
    """The clearest reason a child failed: its error event, else the end of its stderr."""
    if error is not None:
        advice = error.get("advice") or ""
        return f"{error.get('message', '')}{f' — {advice}' if advice else ''}"
    lines = [ln for ln in child.stderr_tail() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    return (errors or lines or [f"the engine exited with code {code}"])[-1]


class _JobController(QObject):
    """A one-shot job (evaluate, export): ``state_changed`` idle | running | done | failed |
    cancelled; ``progress(message, current, total)`` from the child's progress events."""

    state_changed = Signal(str)
    progress = Signal(str, int, int)
    failed = Signal(str)
    log = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = "idle"
        self.child = EngineChild(self)
        self.child.message.connect(self._on_message)
        self.child.log.connect(self.log)
        self.child.exited.connect(self._on_exited)
        self._error: dict[str, Any] | None = None
        self.last_command: list[str] = []
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def is_running(self) -> bool:
        return self.state == "running"

    def cancel(self) -> None:
        if self.is_running():
            self.child.kill()

    def shutdown(self) -> None:
        self.child.shutdown()

    def _run(self, command: list[str]) -> None:
        self._error = None
        self.last_command = command
        self.child.start(command)
        self._set_state("running")

    def _on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "progress":
            self.progress.emit(str(data.get("message", "")), int(data.get("current") or 0),
                               int(data.get("total") or 0))
        elif kind == "error":
            self._error = data

    def _on_exited(self, code: int) -> None:
        if self.child.cancelled:
            self._set_state("cancelled")
        elif code == 0:
            self._succeeded()
        else:
            self.failed.emit(_failure(self.child, self._error, code))
            self._set_state("failed")

    def _succeeded(self) -> None:
        self._set_state("done")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.state_changed.emit(state)


class EvaluateController(_JobController):
    """``python -m engine evaluate RUN_DIR --events-stdout``; ``result(dict)`` is the run's
    ``evaluation.json`` (base and tuned, answers side by side, or classification metrics)."""

    result = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.run_dir: Path | None = None
        self._prompts_file: Path | None = None

    def command(self, run_dir: str | Path, *, prompts_file: str | None = None,
                max_new_tokens: int | None = None) -> list[str]:
        args = [str(run_dir), "--events-stdout"]
        if prompts_file:
            args += ["--prompts", prompts_file]
        if max_new_tokens:
            args += ["--max-new-tokens", str(max_new_tokens)]
        return engine_command("evaluate", *args)

    def start(self, run_dir: str | Path, *, prompts: list[str] | None = None,
              max_new_tokens: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._drop_prompts_file()
        if prompts:
            fd, name = tempfile.mkstemp(prefix="tunesmith-prompts-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
            self._prompts_file = Path(name)
        self._run(self.command(run_dir, prompts_file=name if prompts else None,
                               max_new_tokens=max_new_tokens))

    def _on_exited(self, code: int) -> None:
        self._drop_prompts_file()
        super()._on_exited(code)

    def _succeeded(self) -> None:
        assert self.run_dir is not None
        try:
            data = json.loads((self.run_dir / runs.EVALUATION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.failed.emit(f"the evaluation finished but its result is unreadable: {exc}")
            self._set_state("failed")
            return
        self.result.emit(data)
        self._set_state("done")

    def _drop_prompts_file(self) -> None:
        if self._prompts_file is not None:
            self._prompts_file.unlink(missing_ok=True)
            self._prompts_file = None


class ExportController(_JobController):
    """Runs one or more ``python -m engine export ...`` commands in turn; ``exported(dict)``
    per written result (adapter | merged | gguf: path, files, max_logit_diff, notes)."""

    exported = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: list[list[str]] = []
        self.results: list[dict[str, Any]] = []

    @staticmethod
    def command(run_dir: str | Path, out: str | Path, *, merge: bool = False,
                gguf: bool = False, gguf_type: str = "f16",
                overwrite: bool = False) -> list[str]:
        args = [str(run_dir), "--out", str(out)]
        args += ["--merge"] * merge + (["--gguf", "--gguf-type", gguf_type] if gguf else [])
        args += ["--overwrite"] * overwrite
        return engine_command("export", *args, "--events-stdout")

    def start(self, commands: list[list[str]]) -> None:
        self.results = []
        self._queue = list(commands[1:])
        self._run(commands[0])

    def cancel(self) -> None:
        self._queue = []
        super().cancel()

    def _on_message(self, data: dict[str, Any]) -> None:
        super()._on_message(data)
        if data.get("type") == "exported":
            self.results.append(data)
            self.exported.emit(data)

    def _succeeded(self) -> None:
        if self._queue:
            self._run(self._queue.pop(0))
        else:
            self._set_state("done")


class ChatController(QObject):
    """A ``python -m engine chat RUN_DIR`` child that holds the base and tuned models.

    ``state_changed``: off | loading | ready | busy. ``token(id, model, text)`` per streamed
    piece, ``answered(dict)`` per ``chat_done``. :meth:`close` ends the child and so frees the
    models' memory (the page calls it when it is left, and on ``app.aboutToQuit``).
    """

    state_changed = Signal(str)
    ready = Signal(object)  # the ready event: models, device, chat_template, stop_tokens…
    progress = Signal(str)
    token = Signal(object, str, str)
    answered = Signal(object)
    error = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = "off"
        self.run_dir: Path | None = None
        self.info: dict[str, Any] = {}
        self.child = EngineChild(self)
        self.child.message.connect(self._on_message)
        self.child.exited.connect(self._on_exited)
        self._ids = itertools.count(1)
        self._open: set[tuple[int, str]] = set()  # (id, model) still generating
        self._load_error = False
        self._kill_timer = QTimer(self, singleShot=True, interval=CLOSE_GRACE_MS)
        self._kill_timer.timeout.connect(self._on_close_grace_over)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def start(self, run_dir: str | Path) -> None:
        if self.child.running():
            self.shutdown()
        self.run_dir = Path(run_dir)
        self.info, self._open, self._load_error = {}, set(), False
        self.child.start(engine_command("chat", str(run_dir)), stdin=True)
        self._set_state("loading")

    def send(self, messages: list[dict[str, str]], model: str, *, temperature: float = 0.7,
             top_p: float = 0.9, max_new_tokens: int = 256, seed: int | None = None) -> int:
        """Ask ``model`` (base | tuned) to answer ``messages``; returns the request id."""
        req_id = next(self._ids)
        request: dict[str, Any] = {"id": req_id, "messages": messages, "model": model,
                                   "temperature": temperature, "top_p": top_p,
                                   "max_new_tokens": max_new_tokens}
        if seed is not None:
            request["seed"] = seed
        if not self.child.write(request):
            self.error.emit("the chat process is not running; start the chat again")
            return 0
        self._open.add((req_id, model))
        self._set_state("busy")
        return req_id

    def cancel(self) -> None:
        """Stop every answer being generated or waiting."""
        for req_id in {i for i, _ in self._open}:
            self.child.write({"cancel": req_id})

    def close(self) -> None:
        """Close the chat's stdin: the child cancels, exits and frees its memory; killed if it
        has not gone within a few seconds."""
        if self.child.proc is None or self.state == "off":
            return
        self.child.close_stdin()
        self._kill_timer.start()

    def shutdown(self) -> None:
        self._kill_timer.stop()
        self.child.shutdown(grace_s=CLOSE_GRACE_MS / 1000)

    def _on_close_grace_over(self) -> None:
        self.child.kill()

    def _on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "progress":
            self.progress.emit(str(data.get("message", "")))
        elif kind == "ready":
            self.info = data
            self._set_state("ready")
            self.ready.emit(data)
        elif kind == "chat_token":
            self.token.emit(data.get("id"), str(data.get("model")), str(data.get("text", "")))
        elif kind == "chat_done":
            self._open.discard((data.get("id"), str(data.get("model"))))
            self.answered.emit(data)
            if not self._open:
                self._set_state("ready")
        elif kind == "error":
            self._on_error(data)

    def _on_error(self, data: dict[str, Any]) -> None:
        req_id = data.get("id")
        self._load_error = self._load_error or self.state == "loading"
        self._open = {(i, m) for i, m in self._open if i != req_id} if req_id else self._open
        self.error.emit(_failure(self.child, data, 1))
        if self.state == "busy" and not self._open:
            self._set_state("ready")

    def _on_exited(self, code: int) -> None:
        self._kill_timer.stop()
        if code and self.state == "loading" and not (self.child.cancelled or self._load_error):
            self.error.emit(_failure(self.child, None, code))
        self._open = set()
        self._set_state("off")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)
