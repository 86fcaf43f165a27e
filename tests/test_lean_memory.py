"""Lean memory: QLoRA/LoRA without needless fp32, activation offloading, the catalog's variants.

Tiny Llamas built from a config (bitsandbytes' CPU 4-bit path needs inputs that are multiples
of 64 and outputs multiples of 32, see tests/conftest.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine import catalog
from engine.config import job_from_dict


def _tiny(vocab: int = 256) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bf16-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny()).to(torch.bfloat16).save_pretrained(folder)
    return folder


def _qlora(folder: Path, adapter_dtype: str, ckpt: bool = False) -> Any:
    """The engine's QLoRA setup as on a bf16 GPU: base loaded in bf16, bf16 compute."""
    pytest.importorskip("bitsandbytes")
    from engine.methods import METHODS
    from engine.models import Precision, load_base

    job = job_from_dict({"model": {"source": str(folder)},
                         "method": {"name": "qlora", "r": 8, "adapter_dtype": adapter_dtype}})
    model = load_base(job, str(folder), "cpu", Precision(torch.bfloat16, True, False, "bf16"),
                      True)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return METHODS["qlora"].apply(model, job.method, "sft")


def _dtypes(model: Any) -> dict[str, set[torch.dtype]]:
    out: dict[str, set[torch.dtype]] = {"4bit": set(), "embed_head": set(), "norm": set(),
                                        "trained": set()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out["trained"].add(p.dtype)
        elif p.__class__.__name__ == "Params4bit":
            out["4bit"].add(p.dtype)
        elif "embed_tokens" in name or "lm_head" in name:
            out["embed_head"].add(p.dtype)
        elif "norm" in name:
            out["norm"].add(p.dtype)
    return out


def test_qlora_keeps_embeddings_head_and_norms_16_bit(bf16_llama: Path) -> None:
    d = _dtypes(_qlora(bf16_llama, "fp32"))
    assert d == {"4bit": {torch.uint8}, "embed_head": {torch.bfloat16},
                 "norm": {torch.bfloat16}, "trained": {torch.float32}}


def test_qlora_compute_dtype_adapters_are_bf16(bf16_llama: Path) -> None:
    model = _qlora(bf16_llama, "compute")
    d = _dtypes(model)
    assert d["trained"] == {torch.bfloat16} and d["embed_head"] == {torch.bfloat16}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_peft_preparation_would_have_upcast(bf16_llama: Path) -> None:
    """What the engine no longer does: peft's k-bit preparation makes the frozen rest fp32."""
    pytest.importorskip("bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(bf16_llama, quantization_config=quant,
                                                 device_map="cpu", dtype=torch.bfloat16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert _dtypes(model)["embed_head"] == {torch.float32}


def test_qlora_with_checkpointing_trains_every_adapter(bf16_llama: Path) -> None:
    model = _qlora(bf16_llama, "compute", ckpt=True).train()
    ids = torch.randint(0, 256, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # B starts at zero, so A's first gradient is zero; every B gets one through checkpointing
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_lora_compute_dtype_follows_the_base() -> None:
    from engine.methods import METHODS

    job = job_from_dict({"method": {"name": "lora", "r": 4, "adapter_dtype": "compute"}})
    base = LlamaForCausalLM(_tiny()).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = METHODS["lora"].apply(base, job.method, "sft")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    fp16 = LlamaForCausalLM(_tiny()).to(torch.float16)
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.adapter_dtype"):
        METHODS["lora"].apply(fp16, job.method, "sft")


def test_catalog_knows_base_and_instruct_hub_ids() -> None:
    base = catalog.get("meta-llama/Llama-3.1-8B")
    assert base["name"] == "llama-3.1-8b-instruct" and base["display_name"] == "Llama 3.1 8B"
    assert base["hub_id"] == "meta-llama/Llama-3.1-8B"
    assert catalog.get("meta-llama/llama-3.1-8b-instruct")["hub_id"].endswith("-Instruct")
    hubs = catalog.hub_ids()
    assert len(hubs) == len({h.lower() for h in hubs})  # one home per hub id
    for entry in catalog.list_models():  # every family but Phi-3.5 (instruct only) has both
        if not entry["name"].startswith("phi-"):
            assert entry.get("variants"), entry["name"]
    from engine.advisor import resolve_model

    assert resolve_model("Qwen/Qwen2.5-7B").info["from"] == "catalog"


# --------------------------------------------------------------------------- offloading


def _grads(model: Any, ids: torch.Tensor, offload: Any = None) -> dict[str, torch.Tensor]:
    model.zero_grad()
    if offload is None:
        loss = model(input_ids=ids, labels=ids).loss
    else:
        with offload:
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # outside the context: the saved tensors' unpack hooks travel with them
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ckpt", [False, True])
def test_offloaded_activations_give_the_same_gradients(ckpt: bool) -> None:
    from engine._offload import OffloadActivations

    torch.manual_seed(0)
    config = _tiny()
    model = LlamaForCausalLM(config).train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 256, (2, 24))
    plain = _grads(model, ids)
    off = OffloadActivations(devices=("cpu",))  # the CUDA path's logic, exercised on the CPU
    moved = _grads(model, ids, off)
    assert plain.keys() == moved.keys()
    for name, g in plain.items():
        torch.testing.assert_close(moved[name], g, rtol=0, atol=0, msg=name)
    assert off.offloaded_bytes > 0
    if ckpt:  # checkpointing saves each layer's input outside its own hooks: those move
        layer_inputs = config.num_hidden_layers * ids.numel() * config.hidden_size * 4
        assert off.offloaded_bytes >= layer_inputs


def test_offloading_skips_parameters_small_tensors_and_other_devices() -> None:
    from engine._offload import OffloadActivations

    off = OffloadActivations(devices=("cpu",), min_bytes=64)
    w = torch.nn.Parameter(torch.randn(8, 8))
    small = torch.randn(4, requires_grad=True)
    assert off._pack(w) is w and off._pack(small) is small
    assert OffloadActivations()._pack(torch.randn(64, 64)) is not None  # cuda only: kept
    big = torch.randn(64, 64)
    packed = off._pack(big)
    assert isinstance(packed, tuple) and packed[0].data_ptr() != big.data_ptr()
    assert torch.equal(off._unpack(packed), big)


def test_offload_decision_refuses_the_cpu_with_a_reason() -> None:
    from engine._offload import offload_decision

    assert offload_decision("on", "cpu")[0] is False
    assert "ignored on cpu" in offload_decision("on", "cpu")[1]
    assert offload_decision("auto", "cpu")[0] is False
    assert offload_decision("on", "cuda") == (True, "training.activation_offloading: on")
    assert offload_decision("auto", "cuda", needed=True)[0] is True
    assert offload_decision("auto", "cuda", needed=None)[0] is False
    assert offload_decision("off", "cuda", needed=True)[0] is False
    job = job_from_dict({"training": {"activation_offloading": "on"}})
    assert job.training.activation_offloading == "on"
