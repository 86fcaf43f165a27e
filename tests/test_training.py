"""Real fine-tunes of a tiny Llama on the CPU: each method, the events, STOP, resume, NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine import events as ev
from engine import runs
from engine.config import job_from_dict
from engine.runs import last_checkpoint
from engine.training import run_training


def make_job(model_dir: Path, data: Path, runs: Path, method: str = "lora", **training):
    settings = {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "seed": 0, **training}
    return job_from_dict({
        "name": "t", "model": {"source": str(model_dir)},
        "dataset": {"path": str(data), "max_length": 64, "eval_split": 2},
        "method": {"name": method, "r": 4, "alpha": 8},
        "training": settings, "output": {"runs_dir": str(runs)}})


def _types(events: list) -> list[str]:
    return [e.type for e in events]


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "dora"])
def test_each_method_trains_and_reloads(method: str, tiny_llama_dir: Path, chat_jsonl: Path,
                                        tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.methods import METHODS

    events: list = []
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, method)
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)
    assert result.status == "completed" and result.step == 3
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.quantized_4bit is (method == "qlora")
    assert 0 < started.trainable_params <= started.total_params
    if method == "full":
        assert started.trainable_params == started.total_params
    else:
        assert started.trainable_params < started.total_params / 5
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == [1, 2, 3]
    assert all(s.loss == s.loss and s.tokens_per_s > 0 for s in steps)

    # The saved result reloads onto a fresh base and gives the same logits as the trained model.
    spec = METHODS[method]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    reloaded = spec.load_trained(base, result.output_path).eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        base_logits = fresh(input_ids=ids).logits
    if method != "qlora":  # qlora's adapter was trained on a 4-bit base: compare shapes only
        assert not torch.allclose(logits, base_logits), "training changed nothing"
    assert logits.shape == base_logits.shape


def test_events_file_matches_the_contract(tiny_llama_dir: Path, chat_jsonl: Path,
                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    writer = ev.EventWriter(run_dir / runs.EVENTS_FILE)
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, eval_steps=2, save_steps=2,
                   sample_prompts=["hi"], sample_max_new_tokens=4)
    run_training(job, run_dir=run_dir, emit=writer)
    writer.close()
    lines = (run_dir / runs.EVENTS_FILE).read_text().splitlines()
    assert all(next(iter(json.loads(line))) == "type" for line in lines)  # type first
    events = runs.read_events(run_dir / runs.EVENTS_FILE)
    types = _types(events)
    for needed in ("data_ready", "run_started", "step", "eval", "sample", "checkpoint",
                   "run_finished"):
        assert needed in types, needed
    assert types[-1] == "run_finished" and events[-1].status == "completed"
    assert types.index("run_started") < types.index("step")
    assert (run_dir / "job.yaml").is_file() and (run_dir / "adapter").is_dir()
    assert (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not list(run_dir.glob("checkpoints/.staging*"))


def test_stop_file_saves_a_checkpoint_and_resume_continues(tiny_llama_dir: Path,
                                                           chat_jsonl: Path,
                                                           tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=6)
    events: list = []

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, ev.Step) and event.step == 2:
            (run_dir / "STOP").write_text("")

    result = run_training(job, run_dir=run_dir, emit=emit)
    # The step that sees the STOP file finishes (the one after the step-2 report at the latest).
    stopped_at = result.step
    assert result.status == "stopped" and 2 <= stopped_at <= 3
    assert events[-1].status == "stopped"
    assert last_checkpoint(run_dir).name == f"checkpoint-{stopped_at}"
    # Every wait is named, in order: load, tokenize, first step, stopping, checkpoint, save.
    stages = [e.stage for e in events if isinstance(e, ev.Progress)]
    order = ["tokenize", "load_model", "first_step", "stopping", "checkpoint", "save"]
    assert [s for s in dict.fromkeys(stages) if s in order] == order
    assert set(stages) <= set(ev.STAGES)
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.Step))
    before = [e.stage for e in events[:first] if isinstance(e, ev.Progress)]
    assert before[-1] == "first_step"  # the wait before the first step is named
    (run_dir / "STOP").unlink()

    resumed: list = []
    result = run_training(job, run_dir=run_dir, emit=resumed.append, resume=True)
    assert result.status == "completed" and result.step == 6
    assert [e.step for e in resumed if isinstance(e, ev.Step)] == list(range(stopped_at + 1, 7))


def test_resume_without_checkpoint_is_a_user_error(tiny_llama_dir: Path, chat_jsonl: Path,
                                                   tmp_path: Path) -> None:
    from engine.errors import UserError

    events: list = []
    with pytest.raises(UserError, match="no complete checkpoint"):
        run_training(make_job(tiny_llama_dir, chat_jsonl, tmp_path), run_dir=tmp_path / "r",
                     emit=events.append, resume=True)
    assert _types(events)[-2:] == ["error", "run_finished"]


def _broken_model(tiny_llama_dir: Path, folder: Path) -> Path:
    """A model whose weights overflow float32 (as a corrupt or badly merged checkpoint does)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e38)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_llama_dir / name, folder / name)
    return folder


def test_non_finite_loss_stops_without_a_checkpoint(tiny_llama_dir: Path, chat_jsonl: Path,
                                                    tmp_path: Path) -> None:
    broken = _broken_model(tiny_llama_dir, tmp_path / "broken")
    events: list = []
    job = make_job(broken, chat_jsonl, tmp_path, save_steps=1)
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)
    assert result.status == "failed" and events[-1].status == "failed"
    errors = [e for e in events if isinstance(e, ev.Error)]
    assert errors and errors[0].code == "non_finite_loss" and "learning_rate" in errors[0].advice
    # The first step with a NaN loss or gradient norm (here the norm, at step 1: its update
    # made every weight NaN while the step's own loss was still finite).
    bad_step = next(e.step for e in events if isinstance(e, ev.Step)
                    and not (math.isfinite(e.loss) and math.isfinite(e.grad_norm)))
    saved = [e.step for e in events if isinstance(e, ev.Checkpoint)]
    assert all(step < bad_step for step in saved)  # no checkpoint of broken weights


def test_a_non_finite_step_is_never_checkpointed_whatever_logging_steps(
        tiny_llama_dir: Path, chat_jsonl: Path, tmp_path: Path) -> None:
    """The guard reads every step's loss and gradient norm, not only the logged ones."""
    broken = _broken_model(tiny_llama_dir, tmp_path / "broken")
    events: list = []
    run_dir = tmp_path / "run"
    job = make_job(broken, chat_jsonl, tmp_path, max_steps=4, save_steps=1, logging_steps=5)
    result = run_training(job, run_dir=run_dir, emit=events.append)
    assert result.status == "failed" and result.output_path is None
    assert [e.code for e in events if isinstance(e, ev.Error)] == ["non_finite_loss"]
    assert not [e for e in events if isinstance(e, ev.Checkpoint)]
    assert runs.checkpoints(run_dir, complete=False) == []
    assert not (run_dir / "adapter").exists()
    assert result.step == 1  # stopped at the first bad step, not at the next log line


def test_warmup_ratio_one_warms_up_over_every_step(tiny_llama_dir: Path, chat_jsonl: Path,
                                                   tmp_path: Path) -> None:
    """transformers reads warmup_steps 1.0 as one step: the ratio must become a step count."""
    from engine.models import resolve_precision
    from engine.training import planned_steps, training_arguments

    events: list = []
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=4, warmup_ratio=1.0,
                   lr_scheduler="linear")
    run_training(job, run_dir=tmp_path / "run", emit=events.append)
    rates = [e.learning_rate for e in events if isinstance(e, ev.Step)]
    peak = job.training.learning_rate
    # Each step reports the rate it ran with: 0, ¼, ½, ¾ of the peak (one warm-up step would
    # have given 0, then the peak, then decay).
    assert rates == pytest.approx([peak * k / 4 for k in range(4)])

    by_epochs = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=-1, epochs=2.0,
                         warmup_ratio=0.5, grad_accum=2)
    args = training_arguments(by_epochs, tmp_path / "e", "cpu", resolve_precision("fp32", "cpu"),
                              False, train_sequences=9)
    assert planned_steps(args, 9) == 4  # ceil(9 / (4 × 2)) = 2 steps an epoch, 2 epochs
    assert args.get_warmup_steps(4) == 2


# --------------------------------------------------------------------------- a full disk

TORCH_DISK_FULL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                   "writing file data/0: file write failed")


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
        tiny_llama_dir: Path, chat_jsonl: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from engine.errors import UserError

    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # torch.save on a full disk, for the second checkpoint
        if "checkpoint-4" in str(f):
            Path(f).write_bytes(b"partial")
            raise RuntimeError(TORCH_DISK_FULL)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run_dir, events = tmp_path / "run", []
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=6, save_steps=2)
    with pytest.raises(UserError, match="disk full") as info:
        run_training(job, run_dir=run_dir, emit=events.append)
    assert str(run_dir / runs.CHECKPOINTS) in info.value.message and "needed" in info.value.message
    assert [p.name for p in runs.checkpoints(run_dir, complete=False)] == ["checkpoint-2"]
    assert runs.checkpoint_is_finite(runs.last_checkpoint(run_dir))
    assert not (run_dir / runs.CHECKPOINTS / ".staging").exists()
    assert [e.code for e in events if isinstance(e, ev.Error)] == ["disk_full"]
    assert events[-1].status == "failed" and events[-1].step == 4


def test_disk_full_at_the_final_save_then_resume_does_not_train_past_the_end(
        tiny_llama_dir: Path, chat_jsonl: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from peft import PeftModel

    from engine.errors import UserError

    real = PeftModel.save_pretrained

    def save_pretrained(self, folder, *args, **kwargs):
        if ".adapter.partial" in str(folder):  # the final save, not the checkpoint's
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "save_pretrained", save_pretrained)
    run_dir, events = tmp_path / "run", []
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=2, save_steps=2)
    with pytest.raises(UserError, match="disk full"):
        run_training(job, run_dir=run_dir, emit=events.append)
    assert events[-1].status == "failed" and events[-1].step == 2
    assert not (run_dir / ".adapter.partial").exists() and not (run_dir / "adapter").exists()
    assert runs.last_checkpoint(run_dir).name == "checkpoint-2"

    monkeypatch.setattr(PeftModel, "save_pretrained", real)  # space freed
    resumed: list = []
    result = run_training(job, run_dir=run_dir, emit=resumed.append, resume=True)
    assert result.status == "completed" and result.step == 2
    assert not [e for e in resumed if isinstance(e, ev.Step)]  # nothing past max_steps
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_disk_full_at_start_says_so(tiny_llama_dir: Path, chat_jsonl: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from engine.cli import main
    from engine.config import save_job

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "write_job", full)
    job_file, run_dir = tmp_path / "job.yaml", tmp_path / "run"
    save_job(make_job(tiny_llama_dir, chat_jsonl, tmp_path), job_file)
    assert main(["train", str(job_file), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and str(run_dir) in err and "Traceback" not in err
    codes = [e.code for e in runs.run_events(run_dir) if isinstance(e, ev.Error)]
    assert codes == ["disk_full"]


def test_samples_fall_back_to_held_out_questions(tiny_llama_dir: Path, chat_jsonl: Path,
                                                 tmp_path: Path) -> None:
    """No training.sample_prompts: the evaluation answers the held-out questions, as Evaluate
    does (engine._samples.sample_prompts_for is the one rule)."""
    events: list = []
    job = make_job(tiny_llama_dir, chat_jsonl, tmp_path, max_steps=2,
                   sample_max_new_tokens=2)
    assert job.training.sample_prompts == []
    assert run_training(job, run_dir=tmp_path / "run", emit=events.append).status == "completed"
    samples = [e for e in events if isinstance(e, ev.Sample)]
    assert samples, "no sample answers without training.sample_prompts"
    held_out = {json.loads(line)["messages"][0]["content"]
                for line in chat_jsonl.read_text().splitlines() if line.strip()}
    assert {s.prompt for s in samples} <= held_out
