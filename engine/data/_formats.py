"""Dataset formats: detect which one rows are in, and turn each row into a Sample.

A Sample is one of: a conversation (``messages``), a prompt with its completion, a plain text,
or a text with a label. Every problem names the row and says what is expected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from engine.data._readers import Row
from engine.errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system", "bot": "assistant"}
MESSAGE_ROLES = ("system", "user", "assistant")
TEXT_KEYS = ("text", "sentence", "content", "review", "document")
LABEL_KEYS = ("label", "labels", "category", "class", "intent", "sentiment")

EXPECTED = {
    "alpaca": "keys instruction, output (and optional input, system)",
    "sharegpt": 'key conversations: a list of {"from": "human"|"gpt"|"system", "value": ...}',
    "messages": 'key messages: a list of {"role": "system"|"user"|"assistant", "content": ...}',
    "text": "a text column (text) or a .txt file",
    "prompt_completion": "keys prompt and completion",
    "classification": "a text column and a label column",
}


@dataclass
class Sample:
    where: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    label: str | None = None


def _guess(keys: set[str], text_column: str, label_column: str) -> str | None:
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    text = text_column if text_column in keys else next((k for k in TEXT_KEYS if k in keys), None)
    label = label_column if label_column in keys else next(
        (k for k in LABEL_KEYS if k in keys), None)
    if text and label:
        return "classification"
    if text:
        return "text"
    return None


def detect_format(rows: list[Row], text_column: str = "", label_column: str = "",
                  task: str = "sft") -> str:
    """The format most of the first rows are in; DataError when none fits."""
    votes = Counter(_guess(set(r.data), text_column, label_column) for r in rows[:200])
    best, _count = votes.most_common(1)[0]
    if best == "classification" and task == "sft":
        best = "text" if votes.get("text") else "classification"
    if best is None:
        keys = ", ".join(sorted(rows[0].data)) or "none"
        raise DataError(
            f"cannot tell the dataset's format from its keys ({keys}) in {rows[0].where}",
            [f"{fmt}: {desc}" for fmt, desc in EXPECTED.items()],
            "rename the columns to one of the formats above, or set dataset.format")
    return best


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from CSV/Parquet
        return None
    return value if isinstance(value, str) else str(value)


def _conversation(where: str, turns: Any, role_key: str, text_key: str,
                  roles: dict[str, str]) -> tuple[list[dict[str, str]] | None, str | None]:
    if not isinstance(turns, list) or not turns:
        return None, "expected a non-empty list of turns"
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            return None, f"turn {i} needs keys {role_key!r} and {text_key!r}"
        role = roles.get(str(turn[role_key]).lower())
        if role is None:
            return None, f"turn {i} has an unknown {role_key} {turn[role_key]!r}"
        content = _str(turn[text_key]) or ""
        out.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in out):
        return None, "has no assistant answer to learn from"
    err = _turn_order(out)
    return (None, err) if err else (out, None)


def _turn_order(turns: list[dict[str, str]]) -> str | None:
    """Chat templates (and the masking) need system turns first, then user and assistant
    in turn, starting with the user."""
    body = turns
    while body and body[0]["role"] == "system":
        body = body[1:]
    first = len(turns) - len(body)
    if body and body[0]["role"] != "user":
        return (f"turn {first} is from the {body[0]['role']}: a conversation starts with the "
                "user (after optional system turns); drop that turn or add the user's before it")
    for i, (prev, turn) in enumerate(pairwise(body), first + 1):
        if turn["role"] == "system":
            return (f"turn {i} is a system turn in the middle: system turns come first; "
                    "move it to the start")
        if turn["role"] == prev["role"]:
            return (f"turns {i - 1} and {i} are both from the {turn['role']}: "
                    "user and assistant must take turns; merge them into one turn")
    return None


def _to_sample(row: Row, fmt: str, text_column: str, label_column: str,
               system_prompt: str) -> tuple[Sample | None, str | None]:
    d, where = row.data, row.where
    if fmt == "messages":
        msgs, err = _conversation(where, d.get("messages"), "role", "content",
                                  {r: r for r in MESSAGE_ROLES})
    elif fmt == "sharegpt":
        msgs, err = _conversation(where, d.get("conversations"), "from", "value",
                                  SHAREGPT_ROLES)
    elif fmt == "alpaca":
        instruction, output = _str(d.get("instruction")), _str(d.get("output"))
        if not instruction or not output:
            return None, "needs a non-empty instruction and output"
        extra = _str(d.get("input"))
        user = f"{instruction}\n\n{extra}" if extra else instruction
        msgs, err = [{"role": "user", "content": user},
                     {"role": "assistant", "content": output}], None
        if _str(d.get("system")):
            msgs.insert(0, {"role": "system", "content": _str(d.get("system")) or ""})
    elif fmt == "prompt_completion":
        prompt, completion = _str(d.get("prompt")), _str(d.get("completion"))
        if prompt is None or not completion:
            return None, "needs a prompt and a non-empty completion"
        return Sample(where, prompt=prompt, completion=completion), None
    elif fmt in ("text", "classification"):
        tcol = text_column or next((k for k in TEXT_KEYS if k in d), "text")
        text = _str(d.get(tcol))
        if not text or not text.strip():
            return None, f"has no text in column {tcol!r}"
        if fmt == "text":
            return Sample(where, text=text), None
        lcol = label_column or next((k for k in LABEL_KEYS if k in d), "label")
        label = _str(d.get(lcol))
        if label is None or not label.strip():
            return None, f"has no label in column {lcol!r}"
        return Sample(where, text=text, label=label.strip()), None
    else:
        raise ValueError(fmt)
    if err:
        return None, err
    assert msgs is not None
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return Sample(where, messages=msgs), None


def to_samples(rows: list[Row], fmt: str, *, text_column: str = "", label_column: str = "",
               system_prompt: str = "") -> tuple[list[Sample], list[str]]:
    """Samples from rows, and one problem line per row that does not fit ``fmt``."""
    samples, problems = [], []
    for row in rows:
        sample, err = _to_sample(row, fmt, text_column, label_column, system_prompt)
        if err:
            problems.append(f"{row.where}: {err} (format {fmt}: {EXPECTED[fmt]})")
        elif sample is not None:
            samples.append(sample)
    return samples, problems


def single_class(samples: list[Sample]) -> str | None:
    """The problem of classification samples that all share one label (nothing to tell
    apart), or None."""
    labels = {s.label for s in samples}
    if len(samples) < 1 or len(labels) != 1:
        return None
    return (f"{samples[0].where} to {samples[-1].where}: every row has the label "
            f"{next(iter(labels))!r}; a classifier needs at least two classes")
