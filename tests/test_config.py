"""The job file: defaults, validation naming the key, round trip through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import dump_job, field_help, job_from_dict, load_job, save_job
from engine.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_fill_every_section() -> None:
    job = job_from_dict({"dataset": {"path": "x.jsonl"}})
    assert job.model.source == "smollm2-135m-instruct"
    assert job.method.name == "lora"
    assert job.training.max_steps == -1


def test_yaml_round_trip(tmp_path: Path) -> None:
    job = job_from_dict({"name": "rt", "method": {"name": "qlora", "r": 8},
                         "training": {"learning_rate": "2e-4", "sample_prompts": "hi"}})
    save_job(job, tmp_path / "job.yaml")
    again = load_job(tmp_path / "job.yaml")
    assert again == job
    assert again.training.learning_rate == pytest.approx(2e-4)
    assert again.training.sample_prompts == ["hi"]


@pytest.mark.parametrize(("data", "key"), [
    ({"training": {"batch_sise": 4}}, "training.batch_sise"),
    ({"training": {"batch_size": 0}}, "training.batch_size"),
    ({"training": {"batch_size": "four"}}, "training.batch_size"),
    ({"method": {"name": "lorax"}}, "method.name"),
    ({"task": "translate"}, "task"),
    ({"dataset": {"format": "csvish"}}, "dataset.format"),
    ({"training": {"max_steps": 0}}, "training.max_steps"),
    ({"training": {"gradient_checkpointing": "yes"}}, "training.gradient_checkpointing"),
    ({"model": "smollm"}, "model"),
    ({"colour": "red"}, "colour"),
])
def test_bad_keys_and_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        job_from_dict(data)
    assert info.value.key == key
    assert key in str(info.value)


def _float_fields() -> list[str]:
    import dataclasses
    import typing

    from engine.config import JobConfig

    out = []
    for top in dataclasses.fields(JobConfig):
        if dataclasses.is_dataclass(top.default_factory):  # type: ignore[arg-type]
            hints = typing.get_type_hints(top.default_factory)
            out += [f"{top.name}.{f.name}" for f in dataclasses.fields(top.default_factory)
                    if hints[f.name] is float]
    return out


@pytest.mark.parametrize("key", _float_fields())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_rejects_non_finite_values(tmp_path: Path, key: str, value: str) -> None:
    """A NaN passes every range comparison; YAML reads .nan/.inf as floats."""
    section, name = key.split(".")
    path = tmp_path / "job.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == key and "finite" in info.value.message


@pytest.mark.parametrize(("data", "key"), [
    ({"training": {"learning_rate": float("nan")}}, "training.learning_rate"),
    ({"training": {"warmup_ratio": float("nan")}}, "training.warmup_ratio"),
    ({"training": {"epochs": float("inf")}}, "training.epochs"),
    ({"training": {"seed": -7}}, "training.seed"),
    ({"training": {"seed": 2**32}}, "training.seed"),
    ({"method": {"alpha": float("nan")}}, "method.alpha"),
    ({"dataset": {"eval_split": float("nan")}}, "dataset.eval_split"),
])
def test_values_that_used_to_crash_later_are_rejected(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        job_from_dict(data)
    assert info.value.key == key


@pytest.mark.parametrize(("text", "value"), [("off", "off"), ("on", "on"), ("false", "off"),
                                             ("yes", "on"), ("auto", "auto")])
def test_on_off_choices_take_yaml_booleans(tmp_path: Path, text: str, value: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"dataset:\n  packing: {text}\n")  # unquoted: YAML reads off as False
    assert load_job(path).dataset.packing == value


def test_load_job_reports_yaml_errors_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraining:\n  batch_size: [1\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d"):
        load_job(bad)


def test_presets_are_valid_jobs() -> None:
    presets = sorted((REPO / "resources" / "presets").glob("*.yaml"))
    assert presets
    for preset in presets:
        load_job(preset)


def test_every_key_has_help() -> None:
    job = job_from_dict({})
    for section, value in job.to_dict().items():
        if isinstance(value, dict):
            for name in value:
                assert field_help(section, name), f"{section}.{name} has no help text"
    assert "name:" in dump_job(job)


def _fields_with_choices() -> list[tuple[str, str]]:
    import dataclasses

    from engine.config import JobConfig

    out = []
    for top in dataclasses.fields(JobConfig):
        if "choices" in top.metadata:
            out.append(("", top.name))
        elif dataclasses.is_dataclass(top.default_factory):  # type: ignore[arg-type]
            out += [(top.name, f.name) for f in dataclasses.fields(top.default_factory)
                    if "choices" in f.metadata]
    return out


@pytest.mark.parametrize(("section", "name"), _fields_with_choices())
def test_every_choice_list_is_checked_once(section: str, name: str) -> None:
    """Validation reads the field's own ``choices``: a value outside them names the key."""
    key = f"{section}.{name}" if section else name
    data: dict = {name: "no-such-choice"} if not section else {section: {name: "no-such-choice"}}
    with pytest.raises(ConfigError) as info:
        job_from_dict(data)
    assert info.value.key == key and "is not one of" in info.value.message
