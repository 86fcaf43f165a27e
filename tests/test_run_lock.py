"""The run folder's lock: one training per folder, and only the lock's own process counts.

A real second process holds the lock (a child started here); ``python -m engine train`` on the
same ``--run-dir`` is refused with exit 2 and writes nothing into the folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from engine import runs

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time\nfrom engine import runs\nruns.acquire_lock(sys.argv[1])\n"
        "print('locked', flush=True)\ntime.sleep(60)\n")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A live process that holds the lock of ``tmp_path/run``."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc, run_dir
    finally:
        proc.kill()
        proc.wait()


def _job(tmp_path: Path) -> Path:
    job = tmp_path / "job.yaml"
    model = tmp_path / "tiny"  # paths are checked before a run starts: make them real
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    (tmp_path / "data.jsonl").write_text('{"text": "hello"}\n')
    job.write_text(json.dumps({"name": "lock", "model": {"source": str(model)},
                               "dataset": {"path": str(tmp_path / "data.jsonl")},
                               "output": {"runs_dir": str(tmp_path)}}))
    return job


def test_a_second_training_of_a_locked_run_folder_exits_2(holder: Any, tmp_path: Path) -> None:
    proc, run_dir = holder
    (run_dir / runs.STOP_FILE).touch()  # the first run's pending stop must survive
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra in ([], ["--resume"], ["--events-stdout"]):
        out = subprocess.run([sys.executable, "-m", "engine", "train", str(_job(tmp_path)),
                              "--run-dir", str(run_dir), *extra], capture_output=True,
                             text=True, env=env, timeout=120, check=False)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
        assert "is in use" in line and f"training process {proc.pid}" in line
        if extra == ["--events-stdout"]:
            [event] = [json.loads(x) for x in out.stdout.splitlines()]
            assert (event["type"], event["code"]) == ("error", "run_in_use")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([runs.LOCK_FILE, runs.STOP_FILE])
    assert runs.read_lock(run_dir).pid == proc.pid  # type: ignore[union-attr]


def test_a_killed_trainers_lock_is_stale_and_taken_over(holder: Any) -> None:
    proc, run_dir = holder
    assert runs.lock_holder(run_dir).pid == proc.pid  # type: ignore[union-attr]
    proc.kill()  # kill -9: the lock file stays behind
    proc.wait()
    assert (run_dir / runs.LOCK_FILE).is_file() and runs.lock_holder(run_dir) is None
    mine = runs.acquire_lock(run_dir)
    assert mine.pid == os.getpid() and runs.read_lock(run_dir) == mine
    runs.release_lock(run_dir, mine)
    assert not (run_dir / runs.LOCK_FILE).exists()


def test_train_holds_the_lock_while_it_runs_and_releases_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import engine.training
    from engine.cli import main

    seen: list[Any] = []

    def training(job: Any, *, run_dir: Path, **_kw: Any) -> Any:
        seen.append(runs.lock_holder(run_dir))
        if len(seen) == 2:
            raise RuntimeError("a crash mid-run")
        return SimpleNamespace(status="completed")

    monkeypatch.setattr(engine.training, "run_training", training)
    run_dir = tmp_path / "run"
    assert main(["train", str(_job(tmp_path)), "--run-dir", str(run_dir)]) == 0
    assert main(["train", str(_job(tmp_path)), "--run-dir", str(run_dir)]) == 1  # crashed
    assert [p.pid for p in seen] == [os.getpid()] * 2
    assert not (run_dir / runs.LOCK_FILE).exists()  # released after both


def test_only_a_lock_that_matches_its_process_and_folder_counts(tmp_path: Path) -> None:
    run_dir, other = tmp_path / "run", tmp_path / "other"
    run_dir.mkdir()
    other.mkdir()
    me = psutil.Process(os.getpid())
    lock = run_dir / runs.LOCK_FILE

    def write(**fields: Any) -> None:
        data = {"pid": me.pid, "started": me.create_time(), "run_dir": str(run_dir.resolve())}
        lock.write_text(json.dumps({**data, **fields}))

    write()
    assert runs.lock_holder(run_dir).pid == me.pid  # type: ignore[union-attr]
    # This test process's command line does not name the run folder: never to be killed.
    assert runs.lock_holder(run_dir, strict=True) is None
    write(started=me.create_time() - 3600)  # a recycled pid: another program has it now
    assert runs.lock_holder(run_dir) is None
    write(run_dir=str(other.resolve()))  # a lock copied from another run folder
    assert runs.lock_holder(run_dir) is None
    for bad in ("{torn", "[1, 2]", '{"pid": "1", "started": 0, "run_dir": "x"}'):
        lock.write_text(bad)
        assert runs.read_lock(run_dir) is None and runs.lock_holder(run_dir) is None
    taken = runs.acquire_lock(run_dir)  # a malformed lock holds nothing
    assert runs.read_lock(run_dir) == taken
    runs.release_lock(run_dir, taken)


def test_a_run_is_running_only_when_its_lock_says_so(tmp_path: Path) -> None:
    from engine import events as ev

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A crafted run_started: a live pid (this process) and a time in the future.
    (run_dir / runs.EVENTS_FILE).write_text(ev.to_json(ev.RunStarted(
        pid=os.getpid(), time=time.time() + 3600)) + "\n")
    assert runs.summarize_run(run_dir).status == runs.INTERRUPTED
    assert runs.quick_status(run_dir / runs.EVENTS_FILE)[2] is False
    lock = runs.acquire_lock(run_dir)
    assert runs.summarize_run(run_dir).status == runs.RUNNING
    assert runs.quick_status(run_dir / runs.EVENTS_FILE)[2] is True
    runs.release_lock(run_dir, lock)
