"""`python -m engine ...` as a user types it: exit codes, one clear message, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def engine(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _one_clear_message(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_help_lists_the_verbs() -> None:
    proc = engine("--help")
    assert proc.returncode == 0
    for verb in ("train", "data", "advise", "export"):
        assert verb in proc.stdout


@pytest.mark.parametrize(("content", "needles"), [
    ("name: x\ntraining:\n  batch_size: -3\n", ["training.batch_size", "-3"]),
    ("name: x\nmethod:\n  nme: lora\n", ["method.nme", "not a known key"]),
    ("name: x\ndataset: {path: [1\n", ["not valid YAML", "line"]),
    ("name: x\ntraining:\n  learning_rate: .nan\n", ["training.learning_rate", "finite"]),
    ("name: x\ntraining:\n  seed: -7\n", ["training.seed", "-7"]),
])
def test_bad_job_files_exit_2(tmp_path: Path, content: str, needles: list[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(content)
    _one_clear_message(engine("train", str(job)), str(job), *needles)


def test_a_job_file_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_bytes(b"name: caf\xe9\ntraining:\n  max_steps: 2\n")  # Latin-1, not UTF-8
    _one_clear_message(engine("train", str(job)), str(job), "not UTF-8")


def test_missing_job_and_missing_dataset_exit_2(tmp_path: Path, chat_jsonl: Path) -> None:
    import time

    _one_clear_message(engine("train", str(tmp_path / "nope.yaml")), "does not exist")
    job = tmp_path / "job.yaml"
    for source, data, needle in [("smollm2-135m-instruct", tmp_path / "missing.jsonl",
                                  "missing.jsonl"),
                                 (tmp_path / "no-model", chat_jsonl, "no-model"),
                                 (tmp_path / "gone.gguf", chat_jsonl, "gone.gguf")]:
        job.write_text(f"name: x\nmodel: {{source: {source}}}\n"
                       f"dataset: {{path: {data}}}\n"
                       f"output: {{runs_dir: {tmp_path / 'runs'}}}\n")
        start = time.monotonic()
        proc = engine("train", str(job))
        _one_clear_message(proc, needle)
        # Checked before anything loads or any folder is made: nothing is left behind.
        assert time.monotonic() - start < 6, "the path check waited for a model load"
        assert not (tmp_path / "runs").exists()


def test_a_runs_dir_that_is_a_file_exits_2(tmp_path: Path, chat_jsonl: Path,
                                           tiny_llama_dir: Path) -> None:
    runs_dir = tmp_path / "runs"
    runs_dir.write_text("not a folder")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\nmodel: {{source: {tiny_llama_dir}}}\n"
                   f"dataset: {{path: {chat_jsonl}}}\noutput: {{runs_dir: {runs_dir}}}\n")
    _one_clear_message(engine("train", str(job)), str(runs_dir), "not a folder")
    _one_clear_message(engine("train", str(job), "--run-dir", str(runs_dir / "r")),
                       str(runs_dir), "not a folder")


def test_a_read_only_runs_dir_is_one_message(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """mkdir fails as in a read-only folder (the tests run as root, who may write anywhere)."""
    import errno

    from engine import runs
    from engine.errors import UserError

    runs_dir, real = tmp_path / "runs", Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self == runs_dir or runs_dir in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    for call in (lambda: runs.create_run_dir(runs_dir, "x"),
                 lambda: runs.prepare_run_dir(runs_dir / "r")):
        with pytest.raises(UserError, match="read-only") as info:
            call()
        assert str(runs_dir) in info.value.message and info.value.exit_code == 2


def test_run_dir_of_an_existing_run_needs_resume(tmp_path: Path, chat_jsonl: Path,
                                                 tiny_llama_dir: Path) -> None:
    from engine import events as ev
    from engine import runs

    run_dir = tmp_path / "old-run"
    (run_dir / runs.ADAPTER_DIR).mkdir(parents=True)
    (run_dir / runs.ADAPTER_DIR / "adapter_model.safetensors").write_text("weights")
    (run_dir / runs.CHECKPOINTS / runs.checkpoint_name(4)).mkdir(parents=True)
    (run_dir / runs.EVENTS_FILE).write_text(ev.to_json(ev.RunStarted(pid=1)) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\nmodel: {{source: {tiny_llama_dir}}}\n"
                   f"dataset: {{path: {chat_jsonl}}}\n")
    _one_clear_message(engine("train", str(job), "--run-dir", str(run_dir)), str(run_dir),
                       "--resume")
    assert (run_dir / runs.ADAPTER_DIR / "adapter_model.safetensors").read_text() == "weights"
    assert runs.checkpoints(run_dir, complete=False)
    assert runs.holds_a_run(tmp_path / "fresh") == ""


def _turns(*roles: str) -> dict:
    return {"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]}


BAD_DATASETS = {  # name: (file name, content, what the message must say)
    "single object": ("one.json", json.dumps(_turns("user", "assistant")),
                      ["one.json", "single JSON object", "list"]),
    "assistant first": ("chat.jsonl", "\n".join(json.dumps(r) for r in [
        _turns("user", "assistant"), _turns("assistant", "user", "assistant")]),
        ["chat.jsonl line 2", "turn 0", "starts with the user"]),
    "no alternation": ("share.jsonl", "\n".join(json.dumps(r) for r in [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                           {"from": "gpt", "value": "c"}]}]),
        ["share.jsonl line 1", "turns 0 and 1", "take turns"]),
    "one class": ("labels.csv", "text,label\ngood,pos\nfine,pos\nnice,pos\n",
                  ["labels.csv", "'pos'", "two classes"]),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_datasets_exit_2_from_data_and_train(tmp_path: Path, tiny_llama_dir: Path,
                                                 case: str) -> None:
    name, content, needles = BAD_DATASETS[case]
    data = tmp_path / name
    data.write_text(content + "\n")
    task = "classify" if case == "one class" else "sft"
    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\ntask: {task}\nmodel: {{source: {tiny_llama_dir}}}\n"
                   f"dataset: {{path: {data}}}\noutput: {{runs_dir: {tmp_path / 'runs'}}}\n")
    for proc in (engine("data", str(data), "--task", task), engine("train", str(job))):
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert "Traceback" not in out
        for needle in needles:
            assert needle in out, out


def test_data_verb_reports_problems_with_rows(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\nnot json\n')
    proc = engine("data", str(data))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "d.jsonl line 3" in proc.stderr and "not valid JSON" in proc.stderr


def test_data_verb_json_on_the_demo(tiny_llama_dir: Path) -> None:
    proc = engine("data", "resources/datasets/pirate-persona.jsonl", "--model",
                  str(tiny_llama_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["format"] == "messages" and report["rows"] == 160 and report["valid"]
    assert report["token_lengths"]["max"] < 256
    assert any(seg["trained"] for seg in report["preview"][0])


def test_unknown_model_exits_2() -> None:
    proc = engine("data", "resources/datasets/pirate-persona.jsonl", "--model", "./no-such")
    _one_clear_message(proc, "no-such", "built-in defaults")


def test_train_streams_only_json_on_stdout(tiny_llama_dir: Path, chat_jsonl: Path,
                                           tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "name": "cli", "model": {"source": str(tiny_llama_dir)},
        "dataset": {"path": str(chat_jsonl), "max_length": 64},
        "training": {"max_steps": 2, "batch_size": 4}, "output": {"runs_dir": str(tmp_path)}}))
    run_dir = tmp_path / "run"
    proc = engine("train", str(job), "--run-dir", str(run_dir), "--events-stdout")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    types = [json.loads(line)["type"] for line in lines]  # every stdout line is an event
    assert types[-1] == "run_finished" and types.count("step") == 2
    assert (run_dir / "events.jsonl").read_text().splitlines() == lines
    from engine.config import dump_job, load_job

    # The run folder keeps the resolved job; a job file already in the run folder (the GUI
    # saves one there, then starts the child on it) is the user's and stays as it is.
    assert (run_dir / "job.yaml").read_text() == dump_job(load_job(job))
    own = tmp_path / "own"
    own.mkdir()
    (own / "job.yaml").write_text(job.read_text())
    proc = engine("train", str(own / "job.yaml"), "--run-dir", str(own), "--events-stdout")
    assert proc.returncode == 0, proc.stderr
    assert (own / "job.yaml").read_text() == job.read_text()


def test_hub_id_offline_fails_fast_with_advice() -> None:
    proc = engine("data", "resources/datasets/pirate-persona.jsonl", "--model",
                  "SomeOrg/some-model-that-is-not-cached")
    _one_clear_message(proc, "SomeOrg/some-model-that-is-not-cached")
    assert "offline" in proc.stderr or "could not be loaded" in proc.stderr


def test_engine_never_loads_qt_in_a_fresh_interpreter() -> None:
    code = ("import sys, importlib, pkgutil, engine\n"
            "names = [m.name for m in pkgutil.walk_packages(engine.__path__, 'engine.')\n"
            "         if not m.name.endswith('__main__')]\n"
            "assert len(names) > 20, names\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'pyqtgraph', 'superqt', 'gui')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bitsandbytes_kernels_hint_is_filtered(caplog: pytest.LogCaptureFixture) -> None:
    """The "pip install kernels" warning bitsandbytes logs on import (AVX-512 BF16 CPUs) is
    dropped; its other warnings still reach the log."""
    import logging

    from engine.cli import BNB_CPU_LOGGER, quiet_libraries

    quiet_libraries()
    logger = logging.getLogger(BNB_CPU_LOGGER)
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: x. "
                       "Please make sure you already `pip install kernels`")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
