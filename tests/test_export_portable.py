"""Exports that travel: the adapter and card name the base's hub id, the card holds no local
path, files are readable by others, and a merged config reads the same in transformers 4.x and 5.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_export import _small_tokenizer, _spread, train_run

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("small-llama")
    tok = _small_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    _spread(LlamaForCausalLM(config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(small_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(small_llama, tmp_path_factory.mktemp("portable"))


def _with_source(run_dir: Path, tmp_path: Path, source: str) -> Path:
    """A copy of the run that says its base was ``source`` (only the adapter is exported)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    job = yaml.safe_load((copy / "job.yaml").read_text())
    job["model"]["source"] = source
    (copy / "job.yaml").write_text(yaml.safe_dump(job))
    return copy


def _local_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [str(tmp_path_factory.getbasetemp()), os.path.expanduser("~"),
            os.environ["TUNESMITH_CACHE"]]


def _front_matter(card: str) -> dict[str, Any]:
    head = card.split("---\n")[1]
    data: dict[str, Any] = yaml.safe_load(head)
    return data


# --------------------------------------------------------------------------- the base's name


def test_base_identity() -> None:
    from engine import catalog
    from engine.models import DEFAULT_MODELS, base_identity

    default = base_identity("smollm2-135m-instruct")
    assert default.name_or_path == default.hub_id == HUB_ID
    assert default.license == "Apache-2.0" and default.hub_license == ("apache-2.0", None)
    assert any("Q4_1" in n and "de-quantized" in n for n in default.notes)
    for name, model in DEFAULT_MODELS.items():  # the catalog and the defaults agree
        entry = catalog.get(name)
        assert entry is None or entry["hub_id"] == model.hub_id
    llama = base_identity("meta-llama/Llama-3.2-1B-Instruct")
    assert llama.hub_id == "meta-llama/Llama-3.2-1B-Instruct"
    assert llama.hub_license == ("llama3.2", None)
    assert base_identity("llama-3.2-1b-instruct").hub_id == "meta-llama/Llama-3.2-1B-Instruct"
    qwen = base_identity("Qwen/Qwen2.5-3B-Instruct")
    assert qwen.hub_license == ("other", "qwen-research-license")
    unknown = base_identity("someone/their-model")
    assert unknown.hub_id == "someone/their-model" and unknown.hub_license == ("other", "unknown")


def test_base_identity_of_local_folders(tmp_path: Path) -> None:
    from engine.models import base_identity

    snapshot = tmp_path / "hub" / "models--Org--Name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert base_identity(str(snapshot)).hub_id == "Org/Name"
    local = tmp_path / "my-base"
    local.mkdir()
    ident = base_identity(str(local))
    assert ident.hub_id is None and ident.name_or_path == str(local.resolve())
    assert any("local folder (my-base)" in n for n in ident.notes)
    assert all(str(tmp_path) not in n for n in ident.notes)


def test_adapter_names_the_hub_id(run: Path, tmp_path: Path,
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    from peft import PeftConfig

    from engine.export import export_run

    trained = json.loads((run / "adapter" / "adapter_config.json").read_text())
    with pytest.raises(HFValidationError):  # what AutoPeftModelForCausalLM failed on
        validate_repo_id(trained["base_model_name_or_path"])
    copy = _with_source(run, tmp_path, "smollm2-135m-instruct")
    out = tmp_path / "adapter"
    old = os.umask(0o022)
    try:
        export_run(copy, out)
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "adapter_model.safetensors").stat().st_mode) == 0o644
    # AutoPeftModelForCausalLM reads this field and loads the base from it.
    base = PeftConfig.from_pretrained(out).base_model_name_or_path
    assert base == HUB_ID
    validate_repo_id(base)
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == HUB_ID and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "peft"
    assert "Q4_1" in card and "de-quantized" in card
    assert "`chat.jsonl`" in card
    for path in [str(tmp_path), *_local_paths(tmp_path_factory)]:
        assert path not in card


def test_local_base_keeps_its_path_and_says_so(run: Path, small_llama: Path, tmp_path: Path,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    from engine.export import export_run

    out = tmp_path / "adapter"
    export_run(run, out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(small_llama.resolve())
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert "base_model" not in meta and meta["license"] == "other"
    assert f"local folder ({small_llama.name})" in card
    assert "set base_model_name_or_path" in card
    for path in _local_paths(tmp_path_factory):
        assert path not in card


def test_gguf_only_card_and_file_modes(run: Path, tmp_path: Path,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    from engine.export import export_run

    old = os.umask(0o022)
    try:
        out = tmp_path / "both"
        export_run(run, out, merge=True, gguf=True)
        gguf_only = tmp_path / "gguf"
        export_run(run, gguf_only, gguf=True)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert any(n.endswith(".safetensors") for n in modes) and any(n.endswith(".gguf")
                                                                  for n in modes)
    assert modes == dict.fromkeys(modes, 0o644), modes  # safetensors wrote 0600 before
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert _front_matter((out / "README.md").read_text())["library_name"] == "transformers"
    card = (gguf_only / "README.md").read_text()
    meta = _front_matter(card)
    assert "library_name" not in meta and "gguf" in meta["tags"]
    assert "t-lora-f16.gguf" in card
    for path in _local_paths(tmp_path_factory):
        assert path not in card


# --------------------------------------------------------------------------- transformers 4.x

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _merged_folder(folder: Path, rope: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from engine.export._merge import save_merged

    tok = _small_tokenizer(folder / "tok")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rope_parameters=dict(rope))
    torch.manual_seed(0)
    model = _spread(LlamaForCausalLM(config)).eval()
    save_merged(model, tok, folder, "float32", GenerationConfig(eos_token_id=2))
    return model, tok


def _as_4x_reads_it(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """transformers 4.x's LlamaConfig: top-level rope_theta (default 10000) and rope_scaling."""
    return float(config.get("rope_theta", 10000.0)), config.get("rope_scaling")


@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 100000.0},
                                  {**LLAMA3_ROPE, "rope_theta": 500000.0}],
                         ids=["default-100k", "llama3-500k"])
def test_merged_config_reads_the_same_in_4x_and_5(rope: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model, tok = _merged_folder(tmp_path, rope)
    saved = json.loads((tmp_path / "config.json").read_text())
    theta, scaling = _as_4x_reads_it(saved)
    assert theta == rope["rope_theta"] != 10000.0
    want_scaling = None if rope["rope_type"] == "default" else {
        k: v for k, v in rope.items() if k != "rope_theta"}
    assert scaling == want_scaling
    assert saved["torch_dtype"] == saved["dtype"] == "float32"
    reloaded = AutoConfig.from_pretrained(tmp_path)  # transformers 5
    assert reloaded.rope_parameters == model.config.rope_parameters
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.arange(1, 120)[None]
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    tok_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x has no
    text = "Hello, who are you? <|im_end|> sea"  # TokenizersBackend
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok(text)["input_ids"]


_TF4 = os.environ.get("TUNESMITH_TRANSFORMERS4_PATH", "")
_TF4_CHECK = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
with torch.no_grad():
    got = m(input_ids=torch.arange(1, 120)[None]).logits
want = torch.load(sys.argv[2])
print(float((got - want).abs().max()))
print(AutoTokenizer.from_pretrained(sys.argv[1])("Hello, who are you?")["input_ids"])
"""


@pytest.mark.skipif(not _TF4, reason="set TUNESMITH_TRANSFORMERS4_PATH to a folder holding "
                    "transformers 4.x (pip install --target DIR --no-deps 'transformers<5' "
                    "'huggingface_hub<1' 'tokenizers<0.23')")
def test_merged_folder_loads_in_real_transformers_4(tmp_path: Path) -> None:
    model, tok = _merged_folder(tmp_path / "m", {**LLAMA3_ROPE, "rope_theta": 500000.0})
    with torch.no_grad():
        torch.save(model(input_ids=torch.arange(1, 120)[None]).logits, tmp_path / "want.pt")
    env = {**os.environ, "PYTHONPATH": _TF4}
    out = subprocess.run([sys.executable, "-c", _TF4_CHECK, str(tmp_path / "m"),
                          str(tmp_path / "want.pt")], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert float(out[0]) < 1e-5
    assert json.loads(out[1]) == tok("Hello, who are you?")["input_ids"]
