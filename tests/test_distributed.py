"""One job on two processes (torchrun, gloo on the CPU): one run folder, the single-process
loss curve, STOP and --resume across ranks, a failing rank ends the run with its message.

Each launch is a real ``python -m engine train JOB --devices 2``; on the 2-core test machine
a launch costs ~30 s (two ranks importing torch and transformers), so the file makes two.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import distributed, runs
from engine import events as ev
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
STEPS = 14
# Same samples per optimizer step (the ranks take alternate micro-batches of the one seeded
# permutation), the loss normalised by the tokens of all ranks, gradients averaged by the
# all-reduce, packed rows (no padding to differ): only the order of the fp32 sums differs.
# Measured: 2e-6 at most on this tiny Llama; 1e-4 leaves room and still catches a wrong
# batch (one sample more or less moves the loss by ~1e-2).
TOLERANCE = 1e-4


def _job(tmp_path: Path, model: Path, data: Path, **training: object) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "name": "ddp", "model": {"source": str(model)},
        "dataset": {"path": str(data), "max_length": 48, "eval_split": 0.0},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": STEPS, "batch_size": 2, "learning_rate": 1e-2, "seed": 3,
                     "logging_steps": 1, "precision": "fp32", **training},
        "output": {"runs_dir": str(tmp_path / "runs")}}))
    return job


def _launch(job: Path, run_dir: Path, *extra: str,
            pythonpath: str = str(REPO)) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine", "train", str(job), "--devices", "2",
                             "--run-dir", str(run_dir), *extra], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = child.communicate(timeout=180)
    return child.returncode, err


def _losses(run_dir: Path) -> dict[int, float]:
    return {e.step: e.loss for e in runs.run_events(run_dir) if isinstance(e, ev.Step)}


def test_two_ranks_stop_resume_and_match_one_process(tiny_llama_dir: Path, chat_jsonl: Path,
                                                     tmp_path: Path) -> None:
    job = _job(tmp_path, tiny_llama_dir, chat_jsonl)
    run_dir = tmp_path / "runs" / "ddp"
    first = _launch(job, run_dir)
    deadline = time.monotonic() + 180
    while not any(s >= 2 for s in _losses(run_dir)):  # STOP once training is under way
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.05)
    (run_dir / runs.STOP_FILE).touch()
    code, err = _finish(first)
    assert code == 0, err
    stopped = runs.last_checkpoint(run_dir)
    assert stopped is not None and 2 <= (runs.checkpoint_step(stopped) or 0) < STEPS, err
    # both ranks wrote their RNG state into the staging folder before rank 0 renamed it
    assert {p.name for p in stopped.glob("rng_state_*.pth")} == {"rng_state_0.pth",
                                                                  "rng_state_1.pth"}
    assert [e.status for e in runs.run_events(run_dir)
            if isinstance(e, ev.RunFinished)] == ["stopped"]

    code, err = _finish(_launch(job, run_dir, "--resume"))
    assert code == 0, err
    events = runs.run_events(run_dir)
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["stopped",
                                                                          "completed"]
    starts = [e for e in events if isinstance(e, ev.RunStarted)]
    assert [(s.devices, s.batch_size, s.grad_accum, s.effective_batch) for s in starts] == \
        [(2, 2, 1, 4)] * 2
    # one run: one folder, one events file, one adapter, no lock or rank report left behind
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    assert len(list(tmp_path.rglob(runs.EVENTS_FILE))) == 1
    results = [p for p in tmp_path.rglob(runs.ADAPTER_DIR) if p.is_dir()]
    assert results == [run_dir / runs.ADAPTER_DIR]  # (each checkpoint holds its own copy)
    assert not (run_dir / runs.LOCK_FILE).exists()
    assert not (run_dir / runs.RANKS_DIR).exists()
    assert runs.summarize_run(run_dir).devices == 2

    # the same effective batch (4) in one process: the same curve, step for step
    from engine.config import load_job
    from engine.training import run_training

    single = load_job(job)
    single.training.batch_size = 4
    out: list[ev.Event] = []
    run_training(single, run_dir=tmp_path / "single", emit=out.append)
    want = {e.step: e.loss for e in out if isinstance(e, ev.Step)}
    got = _losses(run_dir)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    assert worst <= TOLERANCE, (worst, got, want)
    assert all(math.isfinite(v) for v in got.values())


FAULT = '''
import os
if os.environ.get("RANK") == "1":
    import engine._callback as cb

    _step_end = cb.EventCallback.on_step_end

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= 2:
            raise RuntimeError("rank one lost its shard at step %d" % state.global_step)
        return _step_end(self, args, state, control, **kw)

    cb.EventCallback.on_step_end = on_step_end
'''


def test_a_rank_that_raises_ends_the_run_with_its_message(tiny_llama_dir: Path,
                                                          chat_jsonl: Path,
                                                          tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)  # imported by every process; acts in rank 1
    job = _job(tmp_path, tiny_llama_dir, chat_jsonl, max_steps=50)
    run_dir = tmp_path / "runs" / "ddp"
    started = time.monotonic()
    code, err = _finish(_launch(job, run_dir, pythonpath=f"{hook}{os.pathsep}{REPO}"))
    assert code == 1, err
    assert time.monotonic() - started < 150  # rank 0 was ended, not left waiting for rank 1
    events = runs.run_events(run_dir)
    errors = [e for e in events if isinstance(e, ev.Error)]
    # rank 1's error first (rank 0 may add its own: the lost connection to rank 1)
    assert (errors[0].rank, errors[0].code) == (1, "crash"), errors
    assert "RuntimeError: rank one lost its shard at step 2" in errors[0].message
    assert all(e.rank in (0, 1) for e in errors) and len(errors) <= 2
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "failed"
    assert "error: rank 1 failed: RuntimeError: rank one lost its shard" in err
    summary = runs.summarize_run(run_dir)
    assert summary.status == "failed"
    assert not (run_dir / runs.LOCK_FILE).exists()


# ------------------------------------------------------------------ the arithmetic, in-process


def test_effective_batch_and_the_accumulation_that_keeps_it() -> None:
    assert distributed.effective_batch(4, 2, 2) == 16
    assert distributed.accumulation_for(16, 4, 1) == 4
    assert distributed.accumulation_for(16, 4, 4) == 1
    assert distributed.accumulation_for(16, 4, 8) is None  # 32 per step already
    assert distributed.accumulation_for(16, 3, 2) is None  # 6 does not divide 16


def _previous_run(run_dir: Path, **fields: int) -> None:
    run_dir.mkdir(parents=True)
    started = ev.RunStarted(time=time.time() - 3600, **fields)  # before this process
    (run_dir / runs.EVENTS_FILE).write_text(ev.to_json(started) + "\n")


@pytest.mark.parametrize(("devices", "batch", "accum", "want_accum", "needle"), [
    (1, 2, 2, 4, "grad_accum 2 → 4 keeps the effective batch at 8 (2 × 4 × 1)"),
    (4, 2, 2, 1, "grad_accum 2 → 1 keeps the effective batch at 8 (2 × 1 × 4)"),
    (2, 3, 2, 2, "the effective batch changes from 8 to 12 (3 × 2 × 2)"),
])
def test_resume_on_another_device_count(tmp_path: Path, devices: int, batch: int, accum: int,
                                        want_accum: int, needle: str) -> None:
    from engine.config import JobConfig, TrainingConfig

    _previous_run(tmp_path / "run", devices=4 if devices == 2 else 2, batch_size=2,
                  grad_accum=1 if devices == 2 else 2, effective_batch=8)
    job = JobConfig(training=TrainingConfig(batch_size=batch, grad_accum=accum))
    warning = distributed.resume_batch(job, tmp_path / "run", devices)
    assert warning is not None and warning.code == "devices_changed"
    assert needle in warning.message, warning.message
    assert job.training.grad_accum == want_accum


def test_resume_on_the_same_device_count_changes_nothing(tmp_path: Path) -> None:
    from engine.config import JobConfig, TrainingConfig

    _previous_run(tmp_path / "run", devices=2, batch_size=2, grad_accum=2, effective_batch=8)
    job = JobConfig(training=TrainingConfig(batch_size=2, grad_accum=2))
    assert distributed.resume_batch(job, tmp_path / "run", 2) is None
    assert job.training.grad_accum == 2


def test_fsdp_is_refused_for_a_4bit_base_and_set_up_for_lora(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from engine.config import JobConfig, MethodConfig, TrainingConfig
    from engine.methods import get_method
    from engine.training import check_fsdp, distributed_arguments

    qlora = JobConfig(method=MethodConfig(name="qlora"), training=TrainingConfig(fsdp="full_shard"))
    with pytest.raises(ConfigError, match=r"training.fsdp: full_shard cannot shard method "
                                          r"qlora's 4-bit base: bitsandbytes"):
        check_fsdp(qlora, get_method("qlora"))
    lora = JobConfig(training=TrainingConfig(fsdp="full_shard"))
    check_fsdp(lora, get_method("lora"))
    assert distributed_arguments(lora, "cuda") == {}  # alone: plain training
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_arguments(lora, "cuda") == {
        "ddp_backend": "nccl", "fsdp": "full_shard auto_wrap",
        "fsdp_config": {"use_orig_params": True, "activation_checkpointing": False}}
    assert distributed_arguments(JobConfig(), "cpu") == {"ddp_backend": "gloo"}


def test_torchrun_by_hand_needs_one_run_folder(tmp_path: Path, chat_jsonl: Path,
                                               tiny_llama_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    job = _job(tmp_path, tiny_llama_dir, chat_jsonl)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", str(job)]) == 2
    assert "2 training processes need one run folder: pass --run-dir" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ the advisor for N GPUs


MODEL = "smollm2-135m-instruct"  # the offline default: its config is in the catalog


def test_advisor_per_gpu_prediction_for_two_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.advisor import advise
    from engine.advisor._devices import plan_devices
    from engine.cli import main

    one = advise(MODEL, vram_gb=8, batch_size=4, grad_accum=4)
    ddp = plan_devices(one, 2, tokens_per_s=3000.0)
    fsdp = plan_devices(one, 2, fsdp=True, layers=30)  # SmolLM2-135M's decoder layers
    for name in ("lora", "full"):
        single = one["methods"][name]
        grads = single["breakdown_gb"]["gradients"]
        # DDP: the whole model on each GPU, plus the reducer's gradient buckets
        assert ddp["methods"][name]["expected_gb"] == pytest.approx(
            single["expected_gb"] + grads, abs=1e-3)
        # FSDP: weights, gradients and optimizer state halved, two layers gathered back
        b = single["breakdown_gb"]
        shard = (b["weights"] + b["gradients"] + b["optimizer"]) / 2
        assert fsdp["methods"][name]["expected_gb"] == pytest.approx(
            single["expected_gb"] - shard + 2 * b["weights"] / 30, abs=2e-3)
    assert "refused" in fsdp["methods"]["qlora"]
    # the effective batch: 4 x 4 on one GPU is 16; unchanged on two it is 32; 2 keeps 16
    assert ddp["batch"] == {**ddp["batch"], "effective_one_gpu": 16, "effective_unchanged": 32,
                            "grad_accum_to_keep": 2}
    # tokens/s: LoRA's gradients are small, full fine-tuning all-reduces every weight's
    lora, full = ddp["methods"]["lora"], ddp["methods"]["full"]
    assert lora["allreduce_mb"] == pytest.approx(2 * 1 / 2 * one["methods"]["lora"][
        "breakdown_gb"]["gradients"] * 1024**3 / 1e6, abs=0.06)  # (both rounded)
    assert 1.95 < lora["tokens_per_s_factor"] <= 2.0
    assert full["tokens_per_s_factor"] < lora["tokens_per_s_factor"]
    assert main(["advise", "--model", MODEL, "--vram-gb", "8", "--method", "lora",
                 "--grad-accum", "4", "--devices", "2"]) == 0
    out = capsys.readouterr().out
    assert "On 2 GPUs, DDP" in out and "4 x 4 x 2 = 32 (one GPU: 16)" in out
    assert "grad_accum 4 → 2" in out
