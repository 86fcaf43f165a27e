"""Export: merge equality (lora, dora, qlora), GGUF round trips, and every refusal.

Models are tiny (2 layers, hidden 32) with a small byte-level BPE vocabulary, so that loading a
GGUF file back through transformers takes seconds rather than a minute.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.errors import UserError

TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _small_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [f"What is {i} plus {i}? Arr, it be {2 * i}! Hello, who are you? Write a haiku "
             f"about the sea. You are a helpful assistant. Tell me about yourself." for i in
             range(50)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(folder)
    return fast


def _tiny_model(kind: str, vocab: int) -> Any:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 2}
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**common, tie_word_embeddings=False,
                                                sliding_window=None))
    return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))


def _spread(model: Any) -> Any:
    """Random init gives near-zero logits; widen the weights so comparisons mean something."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def small_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("small-models")
    out = {}
    for kind in ("llama", "qwen2", "mistral"):
        folder = root / kind
        tok = _small_tokenizer(folder)
        vocab = len(tok) + (5 if kind == "qwen2" else 0)  # qwen2 pads its vocabulary
        _spread(_tiny_model(kind, vocab)).save_pretrained(folder)
        out[kind] = folder
    return out


def _chat_rows(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"Arr, it be {2 * i}!"}]}
            for i in range(24)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def train_run(model_dir: Path, root: Path, method: str = "lora", **training: Any) -> Path:
    from engine import events as ev
    from engine import runs
    from engine.config import job_from_dict
    from engine.training import run_training

    data = _chat_rows(root / "chat.jsonl")
    job = job_from_dict({
        "name": f"t-{method}", "model": {"source": str(model_dir)},
        "dataset": {"path": str(data), "max_length": 64},
        "method": {"name": method, "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2,
                     "warmup_ratio": 0.0, **training},
        "output": {"runs_dir": str(root / "runs")}})
    run_dir = root / "runs" / f"t-{method}"
    writer = ev.EventWriter(run_dir / runs.EVENTS_FILE)
    try:
        result = run_training(job, run_dir=run_dir, emit=writer)
    finally:
        writer.close()
    assert result.status == "completed"
    return run_dir


@pytest.fixture(scope="module")
def lora_run(small_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(small_model_dirs["llama"], tmp_path_factory.mktemp("lora"))


# --------------------------------------------------------------------------- merge


def _reference_logits(run_dir: Path, inputs: list[Any]) -> list[Any]:
    """base (fp32, never 4-bit) + adapter, computed independently of the export code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.config import load_job

    job = load_job(run_dir / "job.yaml")
    base = AutoModelForCausalLM.from_pretrained(job.model.source, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        return [model(input_ids=x).logits for x in inputs]


def _adapter_moved(run_dir: Path) -> bool:
    from safetensors.torch import load_file

    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora", "ia3"])
def test_merge_matches_base_plus_adapter(method: str, small_model_dirs: dict[str, Path],
                                         tmp_path: Path) -> None:
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.export import export_run
    from engine.export._merge import chat_inputs

    run_dir = train_run(small_model_dirs["llama"], tmp_path, method)
    if method != "ia3":  # IA³ scales from 1: any trained vector moves the model
        assert _adapter_moved(run_dir), "lora_B is still zero: the check would prove nothing"
    events: list[Any] = []
    out = tmp_path / "merged"
    [result] = export_run(run_dir, out, merge=True, dtype="float32", emit=events.append)
    assert result.kind == "merged" and result.max_logit_diff is not None
    assert result.max_logit_diff <= 1e-4
    assert any(e.type == "exported" for e in events)
    assert any(e.type == "progress" for e in events)
    tok = AutoTokenizer.from_pretrained(out)
    inputs = chat_inputs(tok)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = [merged(input_ids=x).logits for x in inputs]
    want = _reference_logits(run_dir, inputs)
    diff = max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True))
    assert diff <= 1e-4
    base = AutoModelForCausalLM.from_pretrained(small_model_dirs["llama"], dtype=torch.float32)
    with torch.no_grad():
        moved = float((base(input_ids=inputs[0]).logits - got[0]).abs().max())
    assert moved > 1e3 * max(diff, 1e-7), "the adapter should change the model"
    if method == "qlora":
        assert any("4-bit" in n for n in result.notes)


def test_merged_folder_is_complete(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from engine.export import export_run

    out = tmp_path / "merged"
    [_result] = export_run(lora_run, out, merge=True)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert not any(n.startswith(".") for n in names)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template
    gen = GenerationConfig.from_pretrained(out)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    card = (out / "README.md").read_text()
    for text in ("license:", "LoRA", "r=4", "learning rate", "final training loss",
                 "chat.jsonl"):
        assert text in card


def test_adapter_export(lora_run: Path, tmp_path: Path) -> None:
    from peft import PeftConfig

    from engine.export import export_run

    out = tmp_path / "adapter"
    [result] = export_run(lora_run, out)
    assert result.kind == "adapter" and result.max_logit_diff is None
    assert (out / "adapter_model.safetensors").is_file()
    assert PeftConfig.from_pretrained(out).r == 4
    assert "library_name: peft" in (out / "README.md").read_text()


# --------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize(("kind", "gguf_type"), [("llama", "f16"), ("llama", "q8_0"),
                                                 ("qwen2", "f16"), ("mistral", "q8_0")])
def test_gguf_round_trip(kind: str, gguf_type: str, small_model_dirs: dict[str, Path],
                         tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.export._gguf import check_supported, verify_gguf, write_gguf
    from engine.export._merge import chat_inputs
    from engine.export._stops import end_of_turn_id, stop_token_ids

    folder = small_model_dirs[kind]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    check_supported(model.config, tok)
    stops = stop_token_ids(tok)
    path = tmp_path / f"m-{gguf_type}.gguf"
    facts = write_gguf(model, tok, path, gguf_type=gguf_type, name=f"tiny {kind}", stops=stops,
                       end_of_turn=end_of_turn_id(tok))
    assert facts["architecture"] == ("qwen2" if kind == "qwen2" else "llama")
    check = verify_gguf(path, model, tok, chat_inputs(tok), gguf_type, "Hello, who are you?",
                        stops)
    assert check["tokenizer_matches"]
    rel = check["max_logit_diff"] / check["logit_scale"]
    if gguf_type == "f16":
        assert rel < 1e-2 and check["argmax_agreement"] == 1.0
        assert check["same_greedy_text"], check
    else:
        assert rel < 0.05 and check["argmax_agreement"] >= 0.95


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gguf_follows_llama_cpp_layout(kind: str, small_model_dirs: dict[str, Path],
                                       tmp_path: Path) -> None:
    """llama.cpp permutes Llama's q/k rows for its rope layout, and not Qwen2's."""
    import numpy as np
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.export._gguf import _permute, write_gguf

    folder = small_model_dirs[kind]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    path = tmp_path / "m.gguf"
    write_gguf(model, tok, path, gguf_type="f16", name=kind, stops=[2], end_of_turn=2)
    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    stored_q = np.asarray(tensors["blk.0.attn_q.weight"].data, dtype=np.float32).reshape(q.shape)
    stored_k = np.asarray(tensors["blk.0.attn_k.weight"].data, dtype=np.float32).reshape(k.shape)
    if kind == "llama":
        np.testing.assert_allclose(stored_q, _permute(q, 4), atol=1e-3)
        np.testing.assert_allclose(stored_k, _permute(k, 2), atol=1e-3)
        assert "output.weight" not in tensors  # tied embeddings are written once
    else:
        np.testing.assert_allclose(stored_q, q, atol=1e-3)
        assert "blk.0.attn_q.bias" in tensors and "output.weight" in tensors
    fields = reader.fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert "tokenizer.ggml.merges" in fields and "tokenizer.chat_template" in fields
    assert int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == 2
    types = fields["tokenizer.ggml.token_type"]
    assert int(types.parts[types.data[2]][0]) == 3  # <|im_end|> is a control token


def test_export_gguf_end_to_end(lora_run: Path, tmp_path: Path) -> None:
    from engine.export import export_run

    out = tmp_path / "gguf"
    results = export_run(lora_run, out, merge=True, gguf=True, gguf_type="q8_0")
    assert [r.kind for r in results] == ["merged", "gguf"]
    gguf_file = Path(results[1].path)
    assert gguf_file.name == "t-lora-q8_0.gguf" and gguf_file.is_file()
    assert results[1].details["tokenizer_matches"]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./t-lora-q8_0.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ .Content }}" in modelfile and "<|im_start|>assistant\n" in modelfile
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_ollama_template_reproduces_the_chat_template(small_model_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from engine.export._ollama import chat_pieces

    tok = AutoTokenizer.from_pretrained(small_model_dirs["llama"])
    p = chat_pieces(tok)
    assert p is not None
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Sea?"}]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = {"system": (p.system_prefix, p.system_suffix), "user": (p.user_prefix, p.user_suffix),
             "assistant": (p.assistant_prefix, p.assistant_suffix)}
    got = "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in msgs)
    assert got + p.generation_prompt == want
    assert p.default_system == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


# --------------------------------------------------------------------------- refusals


def test_refuses_non_empty_target_unless_overwrite(lora_run: Path, tmp_path: Path) -> None:
    from engine.cli import main
    from engine.export import export_run

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty") as info:
        export_run(lora_run, out)
    assert info.value.code == "target_not_empty"
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", str(lora_run), "--out", str(out)]) == 2
    # --overwrite replaces only an earlier export: a folder of the user's files stays.
    (out / "data").mkdir()
    (out / "data" / "notes.txt").write_text("mine too")
    with pytest.raises(UserError, match="did not write") as info:
        export_run(lora_run, out, overwrite=True)
    assert info.value.code == "target_not_export"
    assert "data/" in info.value.message and "keep.txt" in info.value.message
    assert main(["export", str(lora_run), "--out", str(out), "--overwrite"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "data" / "notes.txt").read_text() == "mine too"
    assert not list(tmp_path.glob(".taken*"))


def test_overwrite_replaces_an_export_and_nothing_beside_it(lora_run: Path,
                                                            tmp_path: Path) -> None:
    from engine.export import EXPORT_MARKER, export_run, is_export_folder

    out = tmp_path / "exp"
    # Siblings named like the old staging folders, holding the user's files.
    for sibling in (".exp.old", ".exp.partial"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "precious.txt").write_text(sibling)
    (tmp_path / "exp-notes.txt").write_text("beside")
    export_run(lora_run, out)
    assert is_export_folder(out) and (out / EXPORT_MARKER).is_file()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["run"] == str(lora_run.resolve()) and marker["kinds"] == ["adapter"]
    (out / "stale.bin").write_text("from the old export")
    export_run(lora_run, out, overwrite=True)
    assert is_export_folder(out) and not (out / "stale.bin").exists()
    assert (out / "adapter_model.safetensors").is_file()
    for sibling in (".exp.old", ".exp.partial"):
        assert (tmp_path / sibling / "precious.txt").read_text() == sibling
    assert (tmp_path / "exp-notes.txt").read_text() == "beside"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".exp.old", ".exp.partial", "exp", "exp-notes.txt"]  # no staging left behind


def test_disk_full_while_writing_keeps_the_old_export(lora_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills up half-way through `export --overwrite`: one "disk full" line, exit 2,
    the previous export untouched and no partial folder left."""
    import errno

    from engine.cli import main
    from engine.export import _export, export_run

    out = tmp_path / "exp"
    export_run(lora_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    copy = shutil.copy2

    def copy_until_full(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(src).name.endswith(".safetensors"):
            Path(dst).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(_export.shutil, "copy2", copy_until_full)
    assert main(["export", str(lora_run), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and str(tmp_path) in err and "export again" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no staging left behind


def test_malformed_event_lines_are_skipped_and_reported(lora_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from engine.cli import main

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    events = run / "events.jsonl"
    lines = events.read_text().splitlines()
    torn = lines[1][: len(lines[1]) // 2]  # a write cut short before a resume
    wrong = '{"type": "run_finished", "status": "completed", "step": "three"}'
    events.write_text("\n".join([lines[0], torn, *lines[1:3], wrong, *lines[3:]]) + "\n")
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"warning: {events}: skipped 2 malformed line(s) (line 2, 5)" in err
    card = (out / "README.md").read_text()
    assert "three" not in card and "final training loss" in card


def test_refuses_the_base_model_folder(lora_run: Path, small_model_dirs: dict[str, Path]) -> None:
    from engine.export import export_run

    base = small_model_dirs["llama"]
    before = sorted(p.name for p in base.iterdir())
    for out in (base, base / "export", base.parent):
        with pytest.raises(UserError, match="base model") as info:
            export_run(lora_run, out, overwrite=True)
        assert info.value.code == "bad_target"
    with pytest.raises(UserError, match="run folder"):
        export_run(lora_run, lora_run / "export")
    assert sorted(p.name for p in base.iterdir()) == before


def _fake_method_run(lora_run: Path, tmp_path: Path, method: str, monkeypatch: Any) -> Path:
    """A copy of the LoRA run that says it used ``method`` (a method that cannot merge)."""
    import yaml

    from engine import methods

    run = tmp_path / f"run-{method}"
    shutil.copytree(lora_run, run)
    job = yaml.safe_load((run / "job.yaml").read_text())
    job["method"]["name"] = method
    (run / "job.yaml").write_text(yaml.safe_dump(job))
    spec = dataclasses.replace(methods.METHODS["lora"], name=method, mergeable=False,
                               why_not_mergeable=methods.METHODS[method].why_not_mergeable)
    monkeypatch.setitem(methods.METHODS, method, spec)
    return run


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_non_mergeable_method(method: str, lora_run: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main
    from engine.export import export_run

    run = _fake_method_run(lora_run, tmp_path, method, monkeypatch)
    for flags in ({"merge": True}, {"gguf": True}):
        with pytest.raises(UserError, match="cannot be merged") as info:
            export_run(run, tmp_path / "out", **flags)
        assert info.value.code == "not_mergeable"
        assert "no weight to fold" in info.value.message
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--merge"]) == 2
    assert not (tmp_path / "out").exists()
    [result] = export_run(run, tmp_path / "out")
    assert result.kind == "adapter"
    assert any("not merged" in n and "no weight to fold" in n for n in result.notes)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_real_non_mergeable_runs_export_as_adapters(method: str,
                                                    small_model_dirs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    from engine.export import export_run
    from engine.methods import METHODS

    assert not METHODS[method].mergeable
    run = train_run(small_model_dirs["llama"], tmp_path, method)
    with pytest.raises(UserError, match="cannot be merged"):
        export_run(run, tmp_path / "out", merge=True)
    [result] = export_run(run, tmp_path / "out")
    assert result.kind == "adapter" and any("not merged" in n for n in result.notes)
    assert (tmp_path / "out" / "README.md").is_file()
    assert {p.name for p in (run / METHODS[method].output_dir).iterdir()
            if p.is_file()} - {"README.md"} <= set(result.files)


def test_refuses_gguf_for_other_architectures(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, LlamaConfig

    from engine.export import export_run
    from engine.export._gguf import check_supported

    tok = AutoTokenizer.from_pretrained(lora_run / "adapter")
    families = r"llama-family models \(llama, mistral, qwen2, gemma2, phi3\)"
    with pytest.raises(UserError, match=families) as info:
        check_supported(GPT2Config(), tok)
    assert info.value.code == "gguf_unsupported"
    yarn = LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": 8192})
    with pytest.raises(UserError, match="rope scaling 'yarn'"):
        check_supported(yarn, tok)
    # A run whose base is a GPT-2 model is refused before any weights load.
    import yaml

    base = tmp_path / "gpt2-base"
    base.mkdir()
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(base)
    run = tmp_path / "run-gpt2"
    shutil.copytree(lora_run, run)
    job = yaml.safe_load((run / "job.yaml").read_text())
    job["model"]["source"] = str(base)
    (run / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(UserError, match="this model is gpt2"):
        export_run(run, tmp_path / "out", gguf=True)
    assert not (tmp_path / "out").exists()


def test_refuses_when_disk_is_too_full(lora_run: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.export import _export, export_run

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_export.shutil, "disk_usage",
                        lambda _p: usage._replace(free=10 * 2**20))
    with pytest.raises(UserError, match="free disk space") as info:
        export_run(lora_run, tmp_path / "out", merge=True, gguf=True)
    assert info.value.code == "disk_full"
    assert not list(tmp_path.glob("*out*"))
    need = _export.estimate_bytes(_export.open_run(lora_run), merge=True, gguf=True,
                                  gguf_type="f16", dtype="bfloat16")
    assert need > 64 * 2**20


def test_failure_leaves_nothing_behind(lora_run: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import LoraModel

    from engine.cli import main
    from engine.export import ExportCheckFailed, export_run

    merge = LoraModel.merge_and_unload

    def wrong_merge(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = merge(self, *args, **kwargs)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.add_(0.05)
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", wrong_merge)
    with pytest.raises(ExportCheckFailed, match="float64"):
        export_run(lora_run, tmp_path / "out", merge=True)
    assert main(["export", str(lora_run), "--out", str(tmp_path / "out"), "--merge"]) == 1
    assert list(tmp_path.iterdir()) == []


def _lora_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]


def _double_the_adapter(model: Any) -> None:
    for layer in _lora_layers(model):
        for name in layer.scaling:
            layer.scaling[name] *= 2


def _drop_one_module(model: Any) -> None:
    layer = _lora_layers(model)[1]
    for name in layer.scaling:
        layer.scaling[name] = 0.0


@pytest.mark.parametrize("spoil", [_double_the_adapter, _drop_one_module])
def test_merge_check_rejects_a_wrong_merge(spoil: Any, lora_run: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The relative tolerance still catches an adapter merged ×2 or a module left out."""
    from peft.tuners.lora import LoraModel

    from engine.export import ExportCheckFailed, export_run

    merge = LoraModel.merge_and_unload

    def wrong_merge(self: Any, *args: Any, **kwargs: Any) -> Any:
        spoil(self.model)
        return merge(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "merge_and_unload", wrong_merge)
    with pytest.raises(ExportCheckFailed, match="nothing was written"):
        export_run(lora_run, tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()


def test_merge_tolerance_follows_the_logits_scale() -> None:
    from engine.export._merge import MERGE_RELATIVE_TOLERANCE, merge_tolerance, top1_agreement

    small = [torch.tensor([[[0.5, -1.0, 2.0]]])]
    assert merge_tolerance(small) == pytest.approx(2.0 * MERGE_RELATIVE_TOLERANCE)
    assert merge_tolerance([40 * x for x in small]) == pytest.approx(80 * MERGE_RELATIVE_TOLERANCE)
    # SmolLM2-135M on one machine: 1.03e-4 of rounding on logits up to 40.1 (docs/export.md)
    assert MERGE_RELATIVE_TOLERANCE * 40.1 >= 1.03e-4
    assert top1_agreement(small, [x.flip(-1) for x in small]) == 0.0
    assert top1_agreement(small, small) == 1.0


def test_fp32_rounding_is_told_from_a_wrong_merge(lora_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the fp32 tolerance, a float64 re-check decides (deep models drift by ~1e-4)."""
    from engine.export import _merge, export_run

    monkeypatch.setattr(_merge, "MERGE_RELATIVE_TOLERANCE", -1.0)  # force the re-check
    [result] = export_run(lora_run, tmp_path / "out", merge=True)
    assert any("rounding" in n and "float64" in n for n in result.notes)
    monkeypatch.setattr(_merge, "FP64_RECHECK_MAX_PARAMS", 0)  # too big to re-check: fail
    with pytest.raises(_merge.ExportCheckFailed):
        export_run(lora_run, tmp_path / "out2", merge=True)
    assert not (tmp_path / "out2").exists()


def test_cli_events_stdout(lora_run: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    rc = main(["export", str(lora_run), "--out", str(tmp_path / "out"), "--events-stdout"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1]["type"] == "exported" and lines[-1]["kind"] == "adapter"
    assert next(iter(lines[-1])) == "type"


def test_exported_event_round_trips() -> None:
    from engine import events as ev
    from engine.export import Exported

    event = Exported(path="out/m.gguf", kind="gguf", max_logit_diff=0.01, files=["m.gguf"],
                     notes=["checked"], details={"argmax_agreement": 1.0})
    line = ev.to_json(event)
    assert line.startswith('{"type": "exported"')
    assert ev.from_json(line) == event
