from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import JobConfig, job_from_dict
from engine.errors import ConfigError
from gui.controllers.job_model import JobModel
from gui.controllers.presets import load_preset, preset_names


def test_set_emits_the_key_and_validates(qtbot) -> None:
    job = JobModel()
    with qtbot.waitSignal(job.changed) as blocker:
        job.set("training.batch_size", 8)
    assert blocker.args == ["training.batch_size"]
    assert job.job.training.batch_size == 8 and job.dirty
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        job.set("training.batch_size", 0)
    assert job.job.training.batch_size == 8  # a bad value leaves the job as it was


def test_update_merges_a_partial_job() -> None:
    job = JobModel()
    job.update({"method": {"name": "qlora"}, "training": {"grad_accum": 8}})
    assert job.job.method.name == "qlora"
    assert job.job.method.r == 16 and job.job.training.grad_accum == 8
    with pytest.raises(ConfigError, match=r"training\.nonsense"):
        job.update({"training": {"nonsense": 1}})


def test_save_load_round_trip_and_cli_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = JobModel()
    job.set("name", "my-run")
    assert job.cli_command() == "python -m engine train my-run.yaml"
    job.save(tmp_path / "job.yaml")
    assert not job.dirty
    assert job.cli_command() == "python -m engine train job.yaml"
    other = JobModel()
    other.load(tmp_path / "job.yaml")
    assert other.job == job.job


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_applies(name: str) -> None:
    preset = load_preset(name)
    assert preset.description, f"{name} needs a header comment saying what it is for"
    job = JobModel()
    job.update(preset.values)
    assert isinstance(job.job, JobConfig)


def test_vram_presets_exist_with_headers() -> None:
    root = Path(__file__).resolve().parents[2] / "resources" / "presets"
    for tier in ("vram-8gb", "vram-12gb", "vram-24gb"):
        text = (root / f"{tier}.yaml").read_text()
        assert text.startswith("# Preset: a GPU with")
        job_from_dict(yaml.safe_load(text))  # a valid partial job on its own
    assert load_preset("vram-8gb").values["method"]["name"] == "qlora"
    assert preset_names()[:3] == ["vram-8gb", "vram-12gb", "vram-24gb"]


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="vram-8gb"):
        load_preset("nope")
