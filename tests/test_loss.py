"""The chunked causal-LM loss equals the model's own, loss and gradients, inside the Trainer too.

Tolerance: fp32 throughout, the chunked sums only reorder fp32 additions, so loss and every
gradient agree to rtol 1e-5 / atol 1e-6 (measured differences are ~5e-8).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine._loss import causal_lm_loss, plain_head  # noqa: E402
from engine.training import Collator, ListDataset, make_trainer_class  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-6}


def tiny_llama(vocab: int = 300, tied: bool = True, hidden: int = 32) -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
        pad_token_id=0, max_position_embeddings=256))


def rows(lengths: list[int], prompt: int = 3, vocab: int = 300) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def packed_rows() -> list[dict[str, list[int]]]:
    """Two rows, each two samples packed with restarting positions (the second row shorter)."""
    a, b, c, d = rows([7, 5, 6, 4])
    out = []
    for x, y in ((a, b), (c, d)):
        out.append({"input_ids": x["input_ids"] + y["input_ids"],
                    "labels": x["labels"] + [-100] + y["labels"][1:],
                    "position_ids": list(range(len(x["input_ids"])))
                    + list(range(len(y["input_ids"])))})
    return out


BATCHES = {
    "causal": lambda: rows([12, 12, 12]),
    "padding": lambda: rows([12, 5, 9]),
    "packed": packed_rows,
}


def _grads(model: object) -> dict[str, object]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _both(model: object, batch: dict, num_items: object) -> tuple:
    batch = dict(batch)
    batch.pop("tunesmith_token_counts", None)
    labels = batch.pop("labels")
    model.zero_grad()
    ref = model(**batch, labels=labels, num_items_in_batch=num_items).loss
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    hidden = model.model(**batch).last_hidden_state
    got = causal_lm_loss(hidden, model.lm_head.weight, labels, num_items, rows=5)
    got.backward()
    return ref, ref_grads, got, _grads(model)


@pytest.mark.parametrize("kind", sorted(BATCHES))
@pytest.mark.parametrize("normalised", [False, True])
def test_chunked_equals_unfused(kind: str, normalised: bool) -> None:
    model = tiny_llama()
    batch = Collator(0)(BATCHES[kind]())
    num_items = (batch["labels"][:, 1:] != -100).sum() + 7 if normalised else None
    ref, ref_grads, got, grads = _both(model, batch, num_items)
    torch.testing.assert_close(got, ref, **TOL)
    assert ref_grads.keys() == grads.keys() and "model.embed_tokens.weight" in grads  # tied
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, **TOL, msg=name)


def test_grad_accumulation_normalises_over_the_whole_batch() -> None:
    """Two micro-batches, each divided by the count over both: equal to one unfused pass."""
    untied = tiny_llama(tied=False)
    micro = [Collator(0)(rows([10, 6])), Collator(0)(rows([8, 11, 4]))]
    total = sum((b["labels"][:, 1:] != -100).sum() for b in micro)
    sums = {"ref": 0.0, "got": 0.0}
    acc: dict[str, dict[str, object]] = {"ref": {}, "got": {}}
    for batch in micro:
        ref, ref_grads, got, grads = _both(untied, batch, total)
        for key, loss, gr in (("ref", ref, ref_grads), ("got", got, grads)):
            sums[key] += float(loss.detach())
            for name, g in gr.items():
                acc[key][name] = acc[key].get(name, 0) + g
    assert sums["got"] == pytest.approx(sums["ref"], rel=1e-6)
    assert "lm_head.weight" in acc["got"]  # an untied, trainable head gets its gradient
    for name, g in acc["ref"].items():
        torch.testing.assert_close(acc["got"][name], g, **TOL, msg=name)


def test_no_labels_gives_the_models_nan_mean_and_zero_sum() -> None:
    model = tiny_llama()
    batch = Collator(0)([{"input_ids": [5, 6, 7], "labels": [-100] * 3}])
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    assert torch.isnan(causal_lm_loss(hidden, model.lm_head.weight, batch["labels"]))
    assert float(causal_lm_loss(hidden, model.lm_head.weight, batch["labels"], 4).detach()) == 0


def _largest_float32(fn: object) -> int:
    """The most values any fp32 tensor made while ``fn`` runs holds (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    Largest.most = max(Largest.most, t.numel())
            return out

    with Largest():
        fn()
    return Largest.most


def test_logits_are_never_materialised() -> None:
    """A vocabulary-heavy model: the unfused loss makes tokens × vocab fp32, the chunked not."""
    vocab, n = 8192, 2 * 128
    model = tiny_llama(vocab=vocab)
    batch = Collator(0)(rows([128, 128], prompt=8, vocab=vocab))
    labels = batch.pop("labels")

    def unfused() -> None:
        model(**batch, labels=labels).loss.backward()

    def chunked() -> None:
        hidden = model.model(**batch).last_hidden_state
        causal_lm_loss(hidden, model.lm_head.weight, labels, rows=32).backward()

    assert _largest_float32(unfused) >= n * vocab
    # the largest now: a 32-row chunk of logits, or the embedding's gradient (vocab × 32)
    assert _largest_float32(chunked) <= 32 * vocab


def test_plain_head_recognises_llama_and_peft_but_not_others() -> None:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = tiny_llama()
    assert plain_head(model) == (model.model, model.lm_head)
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules="all-linear"))
    assert plain_head(lora) is not None
    assert plain_head(get_peft_model(tiny_llama(tied=False), LoraConfig(
        r=2, target_modules=["q_proj", "lm_head"]))) is None  # an adapted head
    classifier = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    assert plain_head(classifier) is None
    assert plain_head(get_peft_model(tiny_llama(), PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=2))) is not None  # the trainer skips these


def _one_step(model: object, lean: bool, tmp_path: Path, data: list) -> tuple[tuple, dict]:
    from transformers import TrainingArguments

    before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        output_dir=str(tmp_path / f"out-{lean}"), max_steps=1, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.5,
        optim="sgd", max_grad_norm=0.0,
        lr_scheduler_type="constant", logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True, remove_unused_columns=False, seed=0)
    trainer = make_trainer_class()(model=model, args=args, train_dataset=ListDataset(data),
                                   data_collator=Collator(0, count_tokens=True))
    trainer.lean_loss = lean
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    delta = {k: p.detach() - before[k] for k, p in model.named_parameters() if k in before}
    eval_loss = trainer.evaluate(ListDataset(rows([7, 13, 10], prompt=2)))["eval_loss"]
    return (loss, eval_loss), delta


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trainer_step_equals_the_models_own_loss(method: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One SGD step (grad accumulation 2, uneven label counts): same loss, same updates,
    then the same evaluation loss."""
    import engine._loss as loss_mod

    calls = []
    real = loss_mod.causal_lm_loss
    monkeypatch.setattr(loss_mod, "causal_lm_loss",
                        lambda *a, **k: calls.append(1) or real(*a, **k))

    def build() -> object:
        model = tiny_llama()
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                     target_modules="all-linear",
                                                     init_lora_weights=False))
        return model

    data = rows([12, 5, 9, 14], prompt=4)
    ref_loss, ref_delta = _one_step(build(), False, tmp_path, data)
    assert not calls
    loss, delta = _one_step(build(), True, tmp_path, data)
    assert len(calls) == 2 + 2  # both micro-batches and both evaluation batches
    assert loss == pytest.approx(ref_loss, rel=1e-6)  # (train loss, eval loss)
    assert ref_delta.keys() == delta.keys()
    if method == "full":
        assert "model.embed_tokens.weight" in delta  # tied head and embedding, one weight
    for name, d in ref_delta.items():
        assert d.abs().max() > 0, name
        torch.testing.assert_close(delta[name], d, **TOL, msg=name)


# --------------------------------------------------------------------------- real tokens


def test_collator_counts_real_and_trained_tokens() -> None:
    from engine._callback import TOKEN_COUNTS, TokenCounter

    padded = Collator(0, count_tokens=True)(rows([12, 5, 9]))
    # 26 real tokens; labels after the shift: (12-3) + (5-3) + (9-3)
    assert padded[TOKEN_COUNTS].tolist() == [26, 17]
    assert padded["input_ids"].numel() == 36  # what num_input_tokens_seen counts
    packed = Collator(0, count_tokens=True)(packed_rows())
    assert packed[TOKEN_COUNTS].tolist() == [22, (4 + 2 + 3 + 1)]
    assert TOKEN_COUNTS not in Collator(0)(rows([4]))  # evaluation's batches stay as they were

    class OneProcess:
        num_processes = 1

    counter = TokenCounter()
    counter.add({}, padded[TOKEN_COUNTS])
    counter.add({}, packed[TOKEN_COUNTS])
    assert counter.take(OneProcess()) == {"real_tokens": 48, "trained_tokens": 27}
    assert counter.take(OneProcess()) == {}  # a window: reset by each take
    counter.add({"attention_mask": torch.tensor([[1, 1, 0]])}, None)  # classify's batches
    assert counter.take(OneProcess()) == {"real_tokens": 2}


def test_step_events_report_real_tokens(tiny_llama_dir: Path, chat_jsonl: Path,
                                        tmp_path: Path) -> None:
    from engine import events as ev
    from engine.config import job_from_dict
    from engine.training import run_training

    events: list = []
    job = job_from_dict({
        "name": "t", "model": {"source": str(tiny_llama_dir)},
        "dataset": {"path": str(chat_jsonl), "max_length": 64, "packing": "off"},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "seed": 0},
        "output": {"runs_dir": str(tmp_path)}})
    run_training(job, run_dir=tmp_path / "run", emit=events.append)
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert len(steps) == 2
    for step in steps:
        assert step.trained_tokens is not None and step.trained_tokens > 0
        assert step.tokens_per_s > 0
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.precision in ("bf16", "fp32") and started.precision_reason.startswith("auto")


def test_tokens_per_s_counts_real_tokens_not_padding() -> None:
    import time
    from types import SimpleNamespace

    from engine._callback import EventCallback

    events: list = []
    cb = EventCallback(events.append, lambda: False, tokenizer=None, sample_prompts=[],
                       sample_max_new_tokens=1, device="cpu")
    state = SimpleNamespace(global_step=1, max_steps=4, epoch=0.1, num_input_tokens_seen=1000)
    cb._last_time = time.perf_counter() - 2.0
    cb.on_log(None, state, SimpleNamespace(), {"loss": 1.0, "real_tokens": 100,
                                               "trained_tokens": 40})
    assert 45 < events[0].tokens_per_s <= 50  # 100 real tokens in ~2 s, not 1000 padded
    assert events[0].trained_tokens == 40
    state.global_step, state.num_input_tokens_seen = 2, 2000
    cb._last_time = time.perf_counter() - 2.0
    cb.on_log(None, state, SimpleNamespace(), {"loss": 1.0})  # no counter: the old figure
    assert 450 < events[1].tokens_per_s <= 500 and events[1].trained_tokens is None
