"""chat: the JSON-lines child that streams base and tuned answers."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_export import small_model_dirs, train_run  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
GREEDY = {"temperature": 0, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def lora_run(small_model_dirs: dict[str, Path],  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(small_model_dirs["llama"], tmp_path_factory.mktemp("chat-lora"))


class Lines:
    """stdin for serve(): lines put in a queue; None is EOF."""

    def __init__(self) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()

    def __iter__(self) -> Iterator[str]:
        while (line := self.q.get()) is not None:
            yield line

    def send(self, obj: Any) -> None:
        self.q.put(obj if isinstance(obj, str) else json.dumps(obj))

    def close(self) -> None:
        self.q.put(None)


class Events:
    """stdout for serve(): each JSON line becomes an event in a queue."""

    def __init__(self) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._buf = ""

    def write(self, text: str) -> None:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.q.put(json.loads(line))

    def flush(self) -> None:
        pass

    def next(self, timeout: float = 60) -> dict[str, Any]:
        return self.q.get(timeout=timeout)

    def until(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        seen = []
        while sum(e["type"] == kind for e in seen) < count:
            seen.append(self.next())
        return seen


class Session:
    def __init__(self, run: Path, base_only: bool = False, merge: bool = False) -> None:
        from engine.chat import serve

        self.lines, self.events = Lines(), Events()
        self.rc: list[int] = []
        self.thread = threading.Thread(target=lambda: self.rc.append(serve(
            run, lines=self.lines, out=self.events, base_only=base_only, merge=merge)),
            daemon=True)
        self.thread.start()
        self.ready = self.events.until("ready")[-1]

    def close(self) -> int:
        self.lines.close()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.rc[0]


@pytest.fixture
def session(lora_run: Path) -> Iterator[Session]:
    s = Session(lora_run)
    yield s
    if s.thread.is_alive():
        s.close()


def _reference(run: Path, prompt: str, which: str) -> str:
    """Greedy text from models loaded independently of the chat code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.config import load_job

    job = load_job(run / "job.yaml")
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    model = AutoModelForCausalLM.from_pretrained(job.model.source, dtype=torch.float32)
    if which == "tuned":
        model = PeftModel.from_pretrained(model, run / "adapter")
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.eval().generate(**enc, max_new_tokens=6, do_sample=False,
                                    eos_token_id=[tok.eos_token_id],
                                    pad_token_id=tok.pad_token_id)
    return str(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def test_ready_and_side_by_side(session: Session, lora_run: Path) -> None:
    assert session.ready["models"] == ["base", "tuned"]
    assert session.ready["chat_template"] and "<|im_end|>" in session.ready["stop_tokens"]
    prompt = "What is 7 plus 7?"
    session.lines.send({"id": 1, "messages": [{"role": "user", "content": prompt}],
                        "model": "both", **GREEDY})
    events = session.events.until("chat_done", 2)
    done = [e for e in events if e["type"] == "chat_done"]
    assert [d["model"] for d in done] == ["base", "tuned"]
    for d in done:
        streamed = "".join(e["text"] for e in events
                           if e["type"] == "chat_token" and e["model"] == d["model"])
        assert streamed == d["text"] and d["id"] == 1
        assert 0 < d["tokens"] <= 6 and d["tokens_per_s"] > 0
        assert d["finish_reason"] in ("stop", "length")
        assert d["text"] == _reference(lora_run, prompt, d["model"])
    assert session.close() == 0


def test_merged_chat_answers_as_the_adapter_does(small_model_dirs: dict[str, Path],  # noqa: F811
                                                 tmp_path: Path) -> None:
    """The fast path: the adapter merged in memory (and checked) gives the same greedy answers
    as base + adapter, for both sides of the chat."""
    run = train_run(small_model_dirs["llama"], tmp_path, precision="fp32")
    session = Session(run, merge=True)
    assert session.ready["merged"] and session.ready["dtype"] == "float32"
    assert any("merge checked" in n for n in session.ready["notes"])
    prompt = "What is 7 plus 7?"
    session.lines.send({"id": 1, "messages": [{"role": "user", "content": prompt}],
                        "model": "both", **GREEDY})
    done = [e for e in session.events.until("chat_done", 2) if e["type"] == "chat_done"]
    for d in done:
        assert d["text"] == _reference(run, prompt, d["model"])
    assert session.close() == 0


def test_merged_chat_runs_in_bf16_where_the_cpu_has_it(lora_run: Path) -> None:
    from engine.hardware import cpu_native_bf16

    session = Session(lora_run, merge=True)
    assert session.ready["merged"]
    assert session.ready["dtype"] == ("bfloat16" if cpu_native_bf16()[0] else "float32")
    session.lines.send({"id": 1, "messages": [{"role": "user", "content": "Hi"}],
                        "model": "both", **GREEDY})
    done = [e for e in session.events.until("chat_done", 2) if e["type"] == "chat_done"]
    assert [d["model"] for d in done] == ["base", "tuned"] and all(d["tokens"] for d in done)
    assert session.close() == 0


def test_what_is_not_merged_says_why(small_model_dirs: dict[str, Path],  # noqa: F811
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.export import _fast, _run

    for sub in ("p", "l"):
        (tmp_path / sub).mkdir()
    prefix = train_run(small_model_dirs["llama"], tmp_path / "p", "prefix")
    info = _run.open_run(prefix)
    assert "prefix" in (_fast.merge_in_memory_refusal(info, "cpu") or "")
    lora = _run.open_run(train_run(small_model_dirs["llama"], tmp_path / "l"))
    assert _fast.merge_in_memory_refusal(lora, "cpu") is None
    monkeypatch.setattr(_fast, "_free_memory", lambda _d: 1000)
    assert "GiB free" in (_fast.merge_in_memory_refusal(lora, "cpu") or "")
    pair = _fast.load_chat_pair(lora, merge=True)
    assert not pair.merged and "not merged for chat" in pair.notes[0]


def test_cancel_stops_a_generation(session: Session) -> None:
    long = {"id": "long", "messages": [{"role": "user", "content": "Count."}],
            "temperature": 0, "max_new_tokens": 5000}
    session.lines.send(long)
    session.lines.send({"cancel": "long"})
    done = session.events.until("chat_done")[-1]
    assert done["id"] == "long" and done["finish_reason"] == "cancelled"
    assert done["tokens"] < 5000
    # the session carries on
    session.lines.send({"id": 2, "messages": [{"role": "user", "content": "Hi"}], **GREEDY})
    done = session.events.until("chat_done")[-1]
    assert done["id"] == 2 and done["finish_reason"] != "cancelled"


def test_eof_ends_a_running_generation(session: Session) -> None:
    session.lines.send({"id": 3, "messages": [{"role": "user", "content": "Count."}],
                        "temperature": 0, "max_new_tokens": 5000})
    session.lines.close()
    session.thread.join(timeout=60)
    assert not session.thread.is_alive() and session.rc == [0]


def test_bad_requests(session: Session) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    session.lines.send("{not json")
    session.lines.send({"id": 4, "messages": msgs, "model": "other"})
    session.lines.send({"id": 5, "messages": msgs, "temperature": -1})
    session.lines.send({"id": 6, "messages": [{"role": "robot", "content": "x"}]})
    session.lines.send({"id": 7, "messages": msgs, "max_new_tokens": "many"})
    errors = session.events.until("error", 5)
    errors = [e for e in errors if e["type"] == "error"]
    assert errors[0].get("id") is None and "JSON" in errors[0]["message"]
    assert [e.get("id") for e in errors[1:]] == [4, 5, 6, 7]
    assert "model" in errors[1]["message"] and "temperature" in errors[2]["message"]


def test_base_only(lora_run: Path) -> None:
    s = Session(lora_run, base_only=True)
    assert s.ready["models"] == ["base"]
    s.lines.send({"id": 1, "messages": [{"role": "user", "content": "Hi"}], "model": "tuned"})
    assert "not loaded" in s.events.until("error")[-1]["message"]
    s.lines.send({"id": 2, "messages": [{"role": "user", "content": "Hi"}], **GREEDY})
    assert s.events.until("chat_done")[-1]["model"] == "base"
    assert s.close() == 0


def test_child_process(lora_run: Path) -> None:
    """The real verb: JSON lines only on stdout, EOF exits 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "chat", str(lora_run)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == "ready":
                proc.stdin.write(json.dumps({"id": 1, "messages": [
                    {"role": "user", "content": "Hi"}], **GREEDY}) + "\n")
                proc.stdin.flush()
            if events[-1]["type"] == "chat_done":
                proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events[-1]["type"] == "chat_done" and events[-1]["model"] == "tuned"
    assert all(next(iter(e)) == "type" for e in events)


def test_missing_run_is_a_json_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["chat", str(tmp_path)]) == 2
    err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert err["type"] == "error" and "not a run folder" in err["message"]
