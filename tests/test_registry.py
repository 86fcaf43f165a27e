"""The method registry (engine.methods.METHODS) is the one place a method is described.

A method registered here, inside the test, must show up in the job file's choices, the
advisor's table, the architecture map and the export rules without any other file changing;
and every registered method must be covered by every table that is keyed by it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from engine import methods
from engine.config import MethodConfig, job_from_dict
from engine.errors import ConfigError

TWIN = "lora_twin"


def _tiny_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> methods.MethodSpec:
    """LoRA registered a second time under a new name, for this test only."""
    spec = dataclasses.replace(methods.METHODS["lora"], name=TWIN, label="LoRA twin",
                               summary="LoRA under another name (a test method).")
    monkeypatch.setitem(methods.METHODS, TWIN, spec)
    return spec


def test_a_new_method_is_a_valid_job_choice(twin: methods.MethodSpec) -> None:
    job = job_from_dict({"method": {"name": TWIN, "r": 4}})
    assert job.method.name == TWIN
    field = next(f for f in dataclasses.fields(MethodConfig) if f.name == "name")
    assert TWIN in list(field.metadata["choices"])
    with pytest.raises(ConfigError) as err:  # the error for a wrong name lists the new one
        job_from_dict({"method": {"name": "nonesuch"}})
    assert err.value.key == "method.name" and TWIN in err.value.message


def test_a_new_method_is_unknown_once_removed() -> None:
    with pytest.raises(ConfigError) as err:
        job_from_dict({"method": {"name": TWIN}})
    assert err.value.key == "method.name"


def test_a_new_method_appears_in_the_advisor(twin: methods.MethodSpec) -> None:
    from engine.advisor import advise, method_param_counts
    from engine.advisor.cli import format_table

    result = advise("smollm2-135m-instruct", vram_gb=8.0)
    assert list(result["methods"]) == list(methods.METHODS)
    # the same spec as LoRA: the same counts and memory terms (corrections are per name)
    counted = ("trainable_params", "total_params", "share", "breakdown_gb")
    twin_row, lora_row = result["methods"][TWIN], result["methods"]["lora"]
    assert {k: twin_row[k] for k in counted} == {k: lora_row[k] for k in counted}
    assert any(line.startswith(TWIN) for line in format_table(result).splitlines())
    only = advise("smollm2-135m-instruct", vram_gb=8.0, method=TWIN)
    assert only["recommendation"]["method"] == TWIN
    assert only["recommendation"]["reason"].startswith("LoRA twin fits")
    assert method_param_counts("smollm2-135m-instruct", TWIN) == \
        method_param_counts("smollm2-135m-instruct", "lora")


def test_a_new_method_appears_in_explain_and_facts(twin: methods.MethodSpec) -> None:
    from engine.explain import explain
    from engine.method_facts import all_method_facts, method_facts

    report = explain(_tiny_config(), TWIN, {"r": 4})
    assert report["method"] == TWIN and report["label"] == "LoRA twin"
    lora = explain(_tiny_config(), "lora", {"r": 4})
    assert report["totals"] == lora["totals"]
    assert set(all_method_facts(_tiny_config())) == set(methods.METHODS)
    assert method_facts(_tiny_config(), TWIN)["trainable"] == \
        method_facts(_tiny_config(), "lora")["trainable"]


def test_a_method_the_advisor_cannot_model_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.advisor import advise

    spec = dataclasses.replace(methods.METHODS["lora"], name="odd", memory_model="nonesuch")
    monkeypatch.setitem(methods.METHODS, "odd", spec)
    with pytest.raises(NotImplementedError, match=r"'odd'.*'nonesuch'"):
        advise("smollm2-135m-instruct", vram_gb=8.0)


# --------------------------------------------------------------------------- completeness


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_every_method_is_in_every_table(name: str) -> None:
    """Each registered method is covered by each table keyed by its spec."""
    from engine.advisor import MEMORY_TERMS, memory_model

    spec = methods.METHODS[name]
    assert spec.name == name
    assert spec.memory_model in MEMORY_TERMS and memory_model(name) == spec.memory_model
    keys = {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
    assert set(spec.settings) <= keys, f"{name} reads keys the job file lacks"
    assert spec.label and spec.summary and spec.suggested_lr > 0
    assert spec.output_dir in ("adapter", "model")
    assert spec.mergeable or spec.why_not_mergeable, f"say why {name} cannot be merged"
    if spec.peft_config is not None:  # the builder takes a job's MethodConfig
        cfg = job_from_dict({"method": {"name": name}}).method
        assert spec.peft_config(cfg, "sft", _tiny_config()) is not None


def test_labels_are_unique_and_every_setting_is_claimed() -> None:
    labels = [spec.label for spec in methods.METHODS.values()]
    assert len(set(labels)) == len(labels)
    keys = {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
    claimed = {k for spec in methods.METHODS.values() for k in spec.settings}
    assert claimed == keys, f"method.* keys no method reads: {sorted(keys - claimed)}"


def test_the_builtin_methods_are_the_lessons() -> None:
    assert list(methods.METHODS) == ["full", "lora", "qlora", "dora", "adapter", "prefix",
                                     "ptuning_v2", "prompt", "ia3"]
