"""Datasets: every file type and format, detection, masking, EOS, truncation, packing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.data import IGNORE, detect_format, inspect_dataset, load_samples, read_rows
from engine.data._tokenize import encode_all, encode_sample, pack, segments
from engine.errors import DataError, UserError

ROWS = {
    "alpaca": [{"instruction": "Add 2 and 2", "input": "", "output": "4"},
               {"instruction": "Capital of France?", "output": "Paris"}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "hi"},
                                    {"from": "gpt", "value": "hello"}]}] * 2,
    "messages": [{"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}]}] * 2,
    "text": [{"text": "Once upon a time."}, {"text": "The end."}],
    "prompt_completion": [{"prompt": "2+2=", "completion": "4"},
                          {"prompt": "3+3=", "completion": "6"}],
    "classification": [{"text": "great product", "label": "pos"},
                       {"text": "awful", "label": "neg"}],
}


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_format_is_detected(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / "d.jsonl", ROWS[fmt])
    task = "classify" if fmt == "classification" else "sft"
    samples, found, detected = load_samples(str(path), task=task)
    assert (found, detected, len(samples)) == (fmt, True, 2)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_each_file_type_reads(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"d{suffix}", ROWS["alpaca"])
    assert [r.data["output"] for r in read_rows(str(path))] == ["4", "Paris"]


def test_txt_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first block\nstill first\n\nsecond block\n")
    _write(tmp_path / "b.jsonl", ROWS["text"])
    rows = read_rows(str(tmp_path))
    assert [r.data["text"] for r in rows] == ["first block\nstill first", "second block",
                                              "Once upon a time.", "The end."]
    assert rows[1].where == "a.txt line 4"


def test_a_wrapper_object_is_read_but_a_single_row_object_is_not(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": "1", "data": ROWS["alpaca"]}))
    assert len(read_rows(str(path))) == 2
    path.write_text(json.dumps(ROWS["messages"][0]))
    with pytest.raises(DataError) as info:
        read_rows(str(path))
    assert "single JSON object" in info.value.problems[0]


def test_broken_json_lines_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError) as info:
        read_rows(str(path))
    assert len(info.value.problems) == 2
    assert "line 2" in info.value.problems[0] and "line 4" in info.value.problems[1]


def test_rows_that_do_not_fit_the_format_name_their_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [*ROWS["alpaca"], {"instruction": "x", "output": ""}])
    with pytest.raises(DataError) as info:
        load_samples(str(path))
    assert "d.jsonl line 3" in info.value.problems[0]
    report = inspect_dataset(str(path))
    assert report.problems and report.rows == 3


def test_undetectable_format_lists_the_formats(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match="cannot tell") as info:
        detect_format(read_rows(str(path)))
    assert any("alpaca" in p for p in info.value.problems)


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.docx").write_text("")
    with pytest.raises(UserError, match="unsupported type"):
        read_rows(str(tmp_path / "x.docx"))


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path):
    from engine.models import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir))


def test_loss_only_on_the_answer_and_eos_is_trained(tokenizer) -> None:
    from engine.data._formats import Sample

    sample = Sample("t", messages=[{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "hello there"}])
    enc = encode_sample(tokenizer, sample)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    text = tokenizer.decode(trained)
    assert text.startswith("hello there")
    assert tokenizer.eos_token_id in trained  # <|im_end|>: the model learns to stop
    untrained = tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True)
                                  if lab == IGNORE])
    assert "hi" in untrained and "hello" not in untrained


def test_multi_turn_trains_every_answer(tokenizer) -> None:
    from engine.data._formats import Sample

    sample = Sample("t", messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "second answer"}])
    enc = encode_sample(tokenizer, sample)
    runs = [text for text, trained in segments(tokenizer, enc.input_ids, enc.labels) if trained]
    assert len(runs) == 2
    assert runs[0].startswith("first answer") and runs[1].startswith("second answer")


def test_fallback_template_when_model_has_none(tokenizer) -> None:
    import copy

    from engine.data._formats import Sample
    from engine.data._tokenize import ensure_chat_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    assert ensure_chat_template(tok) is True
    enc = encode_sample(tok, Sample("t", messages=[{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}]))
    assert enc.labels[-2] == tok.eos_token_id or enc.labels[-1] == tok.eos_token_id


def test_prompt_completion_and_text_end_with_trained_eos(tokenizer) -> None:
    from engine.data._formats import Sample

    pc = encode_sample(tokenizer, Sample("t", prompt="2+2=", completion=" 4"))
    assert pc.labels[-1] == tokenizer.eos_token_id
    n_prompt = len(tokenizer("2+2=")["input_ids"])
    assert pc.labels[:n_prompt] == [IGNORE] * n_prompt
    text = encode_sample(tokenizer, Sample("t", text="hello world"))
    assert text.labels == text.input_ids and text.input_ids[-1] == tokenizer.eos_token_id


def test_truncate_and_drop_are_counted(tokenizer) -> None:
    from engine.data._formats import Sample

    samples = [Sample("a", text="word " * 50), Sample("b", text="short")]
    kept, stats = encode_all(tokenizer, samples, 16, "truncate")
    assert stats.truncated == 1 and len(kept) == 2 and len(kept[0].input_ids) == 16
    kept, stats = encode_all(tokenizer, samples, 16, "drop")
    assert stats.dropped == 1 and len(kept) == 1


def test_packing_fills_sequences_and_restarts_positions(tokenizer) -> None:
    from engine.data._formats import Sample

    samples = [Sample(str(i), text=f"sample number {i}") for i in range(10)]
    enc, _ = encode_all(tokenizer, samples, 64, "truncate")
    packed = pack(enc, 32)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e.input_ids) for e in enc)
    assert all(len(p["input_ids"]) <= 32 for p in packed) and len(packed) < len(enc)
    first = packed[0]
    restarts = [i for i, pos in enumerate(first["position_ids"]) if pos == 0]
    assert len(restarts) >= 2
    assert all(first["labels"][i] == IGNORE for i in restarts)  # no cross-sample target


def test_packing_is_exact(tiny_llama_dir: Path, tokenizer) -> None:
    """A packed sequence gives the same logits as its samples run one by one."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data._formats import Sample

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    enc, _ = encode_all(tokenizer, [Sample("a", text="the quick brown fox"),
                                    Sample("b", text="jumps over the lazy dog")], 64, "truncate")
    (seq,) = pack(enc, 64)
    with torch.no_grad():
        packed = model(input_ids=torch.tensor([seq["input_ids"]]),
                       position_ids=torch.tensor([seq["position_ids"]]), use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e.input_ids])).logits[0]
                           for e in sorted(enc, key=lambda e: -len(e.input_ids))])
    assert torch.allclose(packed, alone, atol=1e-5)


def test_inspect_with_model_gives_lengths_and_preview(tmp_path: Path,
                                                      tiny_llama_dir: Path) -> None:
    path = _write(tmp_path / "d.jsonl", ROWS["messages"])
    full = inspect_dataset(str(path), model_source=str(tiny_llama_dir), max_length=512)
    assert full.format == "messages" and not full.problems
    assert len(full.lengths) == 2 and full.truncated == 0
    assert any(trained for _text, trained in full.preview[0])
    # One token short: both rows are truncated (cutting the final newline), none dropped.
    short = inspect_dataset(str(path), model_source=str(tiny_llama_dir),
                            max_length=min(full.lengths) - 1)
    assert (short.truncated, short.dropped, len(short.preview)) == (2, 0, 2)


def test_unterminated_string_message_reads_once(tmp_path: Path) -> None:
    """Python's "Unterminated string starting at" plus our " at column" read "at at"."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "no end')
    with pytest.raises(DataError) as info:
        read_rows(str(path))
    text = str(info.value) + " ".join(getattr(info.value, "problems", []) or [])
    assert "Unterminated string starting at column 10" in text
    assert "at at" not in text
