"""``model.trust_remote_code``: a model folder that ships its own config, tokenizer and model
classes (as hub repositories with custom code do) trains only when the job trusts it, and the
CLI says, before anything loads, that the repository's code will run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import UserError

CODE = {
    "configuration_tiny.py": "from transformers import LlamaConfig\n\n\n"
                             "class TinyRemoteConfig(LlamaConfig):\n"
                             "    model_type = 'tiny_remote'\n",
    "modeling_tiny.py": "from transformers import LlamaForCausalLM\n\n"
                        "from .configuration_tiny import TinyRemoteConfig\n\n\n"
                        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n"
                        "    config_class = TinyRemoteConfig\n",
    "tokenization_tiny.py": "from transformers import PreTrainedTokenizerFast\n\n\n"
                            "class TinyRemoteTokenizer(PreTrainedTokenizerFast):\n"
                            "    pass\n",
}


@pytest.fixture(scope="module")
def remote_model(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, dressed as a repository whose config, tokenizer and model are its own."""
    folder = tmp_path_factory.mktemp("remote") / "someone-remote-model"
    shutil.copytree(tiny_llama_dir, folder)
    for name, text in CODE.items():
        (folder / name).write_text(text)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny_remote", architectures=["TinyRemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.update(tokenizer_class="TinyRemoteTokenizer",
               auto_map={"AutoTokenizer": [None, "tokenization_tiny.TinyRemoteTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def _job(tmp_path: Path, model: Path, chat_jsonl: Path, trust: bool) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "name": "remote", "model": {"source": str(model), "trust_remote_code": trust},
        "dataset": {"path": str(chat_jsonl), "max_length": 48},
        "training": {"max_steps": 1, "batch_size": 2}, "output": {"runs_dir": str(tmp_path)}}))
    return job


def test_config_tokenizer_and_model_all_load_the_repositorys_code(remote_model: Path) -> None:
    from engine.models import load_config, load_tokenizer

    assert type(load_config(str(remote_model), trust_remote_code=True)).__name__ == \
        "TinyRemoteConfig"
    assert type(load_tokenizer(str(remote_model), trust_remote_code=True)).__name__ == \
        "TinyRemoteTokenizer"
    for load in (load_config, load_tokenizer):
        with pytest.raises(UserError, match="ships its own Python code") as info:
            load(str(remote_model))  # never a [y/N] prompt, never a traceback
        assert info.value.code == "remote_code"


def test_train_warns_naming_the_repository_then_trains(remote_model: Path, chat_jsonl: Path,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from engine import events as ev
    from engine import runs
    from engine.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", str(_job(tmp_path, remote_model, chat_jsonl, True)),
                 "--run-dir", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "warning (trust_remote_code): model.trust_remote_code is on" in err
    assert str(remote_model) in err
    events = runs.run_events(run_dir)
    [warning] = [e for e in events if isinstance(e, ev.Warning) and e.code == "trust_remote_code"]
    assert str(remote_model) in warning.message and "will run on this machine" in warning.message
    # The warning comes before the model is loaded and trained.
    assert events.index(warning) < next(i for i, e in enumerate(events)
                                        if isinstance(e, ev.RunStarted))
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "completed"


def test_without_trust_the_job_is_refused_with_one_message(remote_model: Path,
                                                           chat_jsonl: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from engine.cli import main

    assert main(["train", str(_job(tmp_path, remote_model, chat_jsonl, False)),
                 "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "ships its own Python code" in err and "Traceback" not in err
