"""The memory model against real tensors: weights, gradients, optimizer states, activations."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from engine import catalog
from engine.advisor import MethodOptions, Setup, method_counts, model_facts
from engine.advisor import _memory as mem
from engine.advisor._counts import peft_config


def tiny_config(**overrides: Any) -> LlamaConfig:
    args: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128,
                            "num_hidden_layers": 2, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "vocab_size": 256,
                            "max_position_embeddings": 512}
    args.update(overrides)
    return LlamaConfig(**args)


def build(config: LlamaConfig, method: str, opts: MethodOptions, attn: str = "sdpa") -> Any:
    from peft import get_peft_model

    config._attn_implementation = attn
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if method != "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a v5-deprecated name
            model = get_peft_model(model, peft_config(method, config, opts))
    return model.train()


class _Holder:
    __slots__ = ("__weakref__", "t")


@contextlib.contextmanager
def recording_saved_tensors(model: Any) -> Iterator[Callable[[], dict[int, int]]]:
    """Inside: autograd's saved tensors are recorded. Yields ``alive()``: the distinct
    storages (data pointer → bytes) still held, weights left out; call it after the forward
    (also after the ``with``). Tensors saved by graphs already freed (e.g. DoRA's detached
    weight norm) are left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    packed: list[tuple[weakref.ref[_Holder], int, int]] = []

    def pack(t: torch.Tensor) -> _Holder:
        h = _Holder()
        h.t = t
        st = t.untyped_storage()
        packed.append((weakref.ref(h), st.data_ptr(), st.nbytes()))
        return h

    def alive() -> dict[int, int]:
        return {ptr: n for ref, ptr, n in packed if ref() is not None and ptr not in params}

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        yield alive


def saved_for_backward_bytes(model: Any, batch: int, seq: int) -> int:
    """Bytes of the distinct storages autograd still holds after the forward pass."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with recording_saved_tensors(model) as alive:
        out = model(input_ids=ids, labels=ids)
    held = alive()
    del out
    return sum(held.values())


def predicted_saved(config: LlamaConfig, method: str, opts: MethodOptions, batch: int,
                    seq: int, **setup: Any) -> float:
    f = model_facts(config)
    s = Setup(method=method, batch_size=batch, seq_len=seq, device="cpu", dtype_bytes=4,
              r=opts.r, lora_dropout=opts.dropout, attention_mask=False, **setup)
    return mem.saved_for_backward(f, s, mem.lora_targets(f, opts.target_modules))


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("entry", catalog.list_models(), ids=lambda e: e["name"])
def test_catalog_counts_match_published_sizes(entry: dict[str, Any]) -> None:
    facts = model_facts(catalog.catalog_config(entry["name"]))
    assert facts.total_params == pytest.approx(entry["params"], rel=0.005)


def test_catalog_lookup_by_name_and_hub_id() -> None:
    assert catalog.get("meta-llama/Llama-3.1-8B-Instruct")["name"] == "llama-3.1-8b-instruct"
    assert catalog.get("QWEN2.5-7B-INSTRUCT")["hub_id"] == "Qwen/Qwen2.5-7B-Instruct"
    assert catalog.get("no-such-model") is None
    assert catalog.catalog_config("no-such-model") is None
    assert len(catalog.list_models()) >= 15


@pytest.mark.parametrize("method", ["lora", "dora", "prefix", "ptuning_v2", "prompt", "ia3"])
def test_meta_counts_equal_real_model_counts(method: str) -> None:
    config = tiny_config()
    opts = MethodOptions(r=8)
    model = build(config, method, opts)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert method_counts(config, method, opts).trainable == trainable


@pytest.mark.parametrize("targets", [("all-linear",), ("q_proj", "v_proj")])
def test_analytic_lora_counts_equal_peft(targets: tuple[str, ...]) -> None:
    from engine.advisor._counts import lora_counts_analytic

    config = catalog.catalog_config("qwen2.5-0.5b-instruct")
    opts = MethodOptions(r=8, target_modules=targets)
    assert lora_counts_analytic(model_facts(config), opts) == method_counts(config, "lora", opts)


def test_adapter_count_is_analytic() -> None:
    counts = method_counts(tiny_config(), "adapter", MethodOptions(bottleneck_size=8))
    assert counts.trainable == 2 * 2 * (64 * 8 + 8 + 8 * 64 + 64)


def test_qlora_trains_what_lora_trains() -> None:
    config = catalog.catalog_config("llama-3.1-8b-instruct")
    lora, qlora = method_counts(config, "lora"), method_counts(config, "qlora")
    assert qlora.trainable == lora.trainable
    assert 0.004 < lora.share < 0.006  # the lesson's "~0.5%"


# --------------------------------------------------------------------------- static terms


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_weights_grads_and_optimizer_match_tensors_after_a_step(method: str) -> None:
    config = tiny_config()
    opts = MethodOptions(r=8)
    model = build(config, method, opts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()

    counts = method_counts(config, method, opts)
    s = Setup(method=method, device="cpu", dtype_bytes=4, r=8)
    f = model_facts(config)
    measured_weights = _tensor_bytes({p.data_ptr(): p for p in model.parameters()}.values())
    measured_grads = _tensor_bytes(p.grad for p in params)
    measured_states = _tensor_bytes(
        v for st in opt.state.values() for k, v in st.items() if k != "step")
    assert mem.weight_bytes(f, counts, s) == pytest.approx(measured_weights, rel=0.01)
    assert mem.gradient_bytes(counts, s) == pytest.approx(measured_grads, rel=0.01)
    assert mem.optimizer_bytes(counts, s) == pytest.approx(measured_states, rel=0.01)


def test_qlora_weights_are_nf4_with_16_bit_rest() -> None:
    f = model_facts(catalog.catalog_config("llama-3.1-8b-instruct"))
    counts = method_counts(catalog.catalog_config("llama-3.1-8b-instruct"), "qlora")
    kept16 = mem.weight_bytes(f, counts, Setup(method="qlora", kbit_upcast=False))
    upcast = mem.weight_bytes(f, counts, Setup(method="qlora", kbit_upcast=True))
    # 6.98B linear weights at ~0.516 bytes + 1.05B embeddings/head/norms at 2 bytes
    assert kept16 / 2**30 == pytest.approx(5.48, abs=0.05)
    assert upcast - kept16 == pytest.approx(2 * f.other_params, rel=1e-6)
    assert mem.nf4_bytes_per_param(False) > mem.nf4_bytes_per_param(True)


def test_8bit_adam_states_are_a_quarter() -> None:
    counts = method_counts(tiny_config(hidden_size=256, intermediate_size=512), "full")
    s32 = mem.optimizer_bytes(counts, Setup(method="full", dtype_bytes=4, optimizer="adamw"))
    s8 = mem.optimizer_bytes(counts, Setup(method="full", dtype_bytes=4,
                                           optimizer="adamw_8bit"))
    assert 0.25 < s8 / s32 < 0.3  # norms (< 4096 elements) keep 32-bit states


# --------------------------------------------------------------------------- activations


ACTIVATION_CASES = [
    ("full", "sdpa", 0.05, False),
    ("full", "eager", 0.05, False),
    ("lora", "sdpa", 0.05, False),
    ("lora", "sdpa", 0.0, False),
    ("lora", "eager", 0.05, False),
    ("dora", "sdpa", 0.05, False),
    ("ia3", "sdpa", 0.05, False),
    ("prompt", "sdpa", 0.05, False),
    ("prefix", "eager", 0.05, False),
    ("full", "sdpa", 0.05, True),
    ("lora", "sdpa", 0.05, True),
]


@pytest.mark.parametrize(("method", "attn", "dropout", "ckpt"), ACTIVATION_CASES)
def test_activations_match_bytes_saved_for_backward(method: str, attn: str, dropout: float,
                                                    ckpt: bool) -> None:
    config = tiny_config(num_hidden_layers=4)
    opts = MethodOptions(r=8, dropout=dropout)
    model = build(config, method, opts, attn)
    if ckpt:
        model.activation_checkpointing_enable()
    measured = saved_for_backward_bytes(model, 2, 48)
    predicted = predicted_saved(config, method, opts, 2, 48, attn_implementation=attn,
                                gradient_checkpointing=ckpt)
    assert predicted == pytest.approx(measured, rel=0.20)


def test_logits_dominate_small_models() -> None:
    f = model_facts(catalog.catalog_config("smollm2-135m-instruct"))
    s = Setup(method="lora", batch_size=4, seq_len=512, gradient_checkpointing=True)
    assert mem.logits_saved_bytes(f, s) == 4 * 512 * 49152 * 4
    assert mem.logits_saved_bytes(f, s) > mem.activation_bytes(f, s, list(f.linears))


@pytest.mark.integration
def test_activations_of_the_real_default_model() -> None:
    from engine.models import load_model_dir

    folder = load_model_dir("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    opts = MethodOptions(r=16, dropout=0.05)
    from peft import get_peft_model

    model = get_peft_model(model, peft_config("lora", config, opts)).train()
    measured = saved_for_backward_bytes(model, 1, 96)
    predicted = predicted_saved(config, "lora", opts, 1, 96,
                                attn_implementation=config._attn_implementation or "sdpa")
    assert predicted == pytest.approx(measured, rel=0.20)


def _quantized_bytes(model: Any) -> int:
    """Bytes of every parameter, with the 4-bit weights' quantization state."""
    total, seen = 0, set()
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is None:
            continue
        total += _tensor_bytes([qs.absmax, qs.code])
        if qs.state2 is not None:  # double quantization: the absmax's own absmax and code
            total += _tensor_bytes([qs.state2.absmax, qs.state2.code])
    return total


@pytest.mark.parametrize("double_quant", [True, False])
def test_qlora_weights_match_a_real_4bit_model(double_quant: bool, tmp_path: Any) -> None:
    pytest.importorskip("bitsandbytes")
    from peft import get_peft_model
    from transformers import BitsAndBytesConfig

    from engine.methods._lora import prepare_kbit

    config = tiny_config(hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=double_quant,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant,
                                                 device_map="cpu", dtype=torch.bfloat16)
    model = prepare_kbit(model)  # the engine's: embeddings, norms and head stay bf16
    opts = MethodOptions(r=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, peft_config("qlora", config, opts))
    predicted = mem.weight_bytes(model_facts(config), method_counts(config, "qlora", opts),
                                 Setup(method="qlora", double_quant=double_quant, r=8))
    assert predicted == pytest.approx(_quantized_bytes(model), rel=0.01)


@pytest.mark.parametrize("method", ["full", "lora", "dora", "adapter", "prefix", "ptuning_v2",
                                    "prompt", "ia3"])
def test_advisor_counts_match_what_the_engine_trains(method: str) -> None:
    """The advisor's meta-device counts and engine.methods apply each method the same way."""
    from transformers import AutoModelForCausalLM

    from engine.config import MethodConfig
    from engine.methods import METHODS

    config = tiny_config()
    model = METHODS[method].apply(AutoModelForCausalLM.from_config(config),
                                  MethodConfig(name=method, r=8), "sft")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert method_counts(config, method, MethodOptions(r=8)).trainable == trainable
