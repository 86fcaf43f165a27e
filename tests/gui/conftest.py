"""GUI tests: headless (offscreen), real engine functions on a tiny Llama built here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import shiboken6

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ENGINE_WAIT_MS = 60_000  # the first engine call imports transformers (slow on 2 CPU cores)


@pytest.fixture(scope="session", autouse=True)
def _engine_imports() -> None:
    """Import the heavy libraries once, up front, so no single test pays for it."""
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Llama (hidden 32) with the default model's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models import load_model_dir

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                         max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    source = Path(load_model_dir("smollm2-135m-instruct"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    (folder / "README.md").write_text("---\nlicense: mit\n---\nA tiny test model.\n")
    return str(folder)


@pytest.fixture
def chat_file(tmp_path: Path) -> str:
    """Five rows in the messages format; rows 4 and 5 have problems."""
    rows = [
        '{"messages": [{"role": "user", "content": "What is the capital of France?"}, '
        '{"role": "assistant", "content": "Paris."}]}',
        '{"messages": [{"role": "user", "content": "Name a primary colour."}, '
        '{"role": "assistant", "content": "Red is a primary colour."}]}',
        '{"messages": [{"role": "user", "content": "Say hello in Spanish."}, '
        '{"role": "assistant", "content": "' + "Hola, amigo. " * 30 + '"}]}',
        '{"messages": [{"role": "user", "content": "No answer here."}]}',
        '{"oops": 1}',
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def ctx(qapp, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh job, worker pool and settings file; fails when a worker is left running."""
    from gui.controllers.settings import AppSettings
    from gui.widgets.theme import apply_theme
    from gui.window.app import create_context

    apply_theme(qapp, dark=False)
    context = create_context(AppSettings(str(tmp_path / "settings.ini")))
    yield context
    assert context.tasks.shutdown(ENGINE_WAIT_MS), "a worker thread was left running"
    # Delete the pool here, on the GUI thread: left to Python's garbage collector it could be
    # destroyed from a worker thread of a later test, which aborts the process.
    shiboken6.delete(context.tasks)


@pytest.fixture
def window(qtbot, ctx):  # type: ignore[no-untyped-def]
    from gui.window.qt_main_window import QtMainWindow

    win = QtMainWindow(ctx)
    win.ask_to_save = False
    win.show()
    yield win
    # Close and delete it before the context goes: no debounce timer may fire afterwards.
    win.shutdown()
    win.close()
    shiboken6.delete(win)


def _train_tiny(model_dir: Path, root: Path, method: str = "lora") -> Path:
    """A finished 2-step run of ``method`` under ``root/runs``."""
    from engine import events as ev
    from engine import runs
    from engine.config import job_from_dict, save_job
    from engine.training import run_training

    data = root / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"Arr, it be {2 * i}!"}]}) for i in range(24)) + "\n")
    job = job_from_dict({
        "name": f"tiny-{method}", "model": {"source": str(model_dir)},
        "dataset": {"path": str(data), "max_length": 64, "eval_split": 2},
        "method": {"name": method, "r": 4, "num_virtual_tokens": 4},
        "training": {"max_steps": 2, "batch_size": 2, "logging_steps": 1},
        "output": {"runs_dir": str(root / "runs")}})
    run_dir = root / "runs" / f"tiny-{method}-20250101-000000"
    run_dir.mkdir(parents=True)
    save_job(job, run_dir / "job.yaml")
    writer = ev.EventWriter(run_dir / runs.EVENTS_FILE)
    try:
        assert run_training(job, run_dir=run_dir, emit=writer).status == "completed"
    finally:
        writer.close()
    return run_dir


@pytest.fixture(scope="session")
def train_tiny_run():  # type: ignore[no-untyped-def]
    """``train_tiny_run(model_dir, root, method)``: a finished 2-step run under root/runs."""
    return _train_tiny
