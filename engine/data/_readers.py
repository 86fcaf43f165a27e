"""Read rows from JSON, JSONL, CSV, Parquet and TXT files, folders of them, or hub datasets.

Each row keeps where it came from (file and line or row number) so every problem can name it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import resources
from engine.errors import DataError, UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
# Keys of a row itself (each format's own): an object with one is a row, not a wrapper of rows.
ROW_KEYS = ("messages", "conversations", "instruction", "output", "prompt", "completion",
            "text")


@dataclass(frozen=True)
class Row:
    where: str  # "demo.jsonl line 12"
    data: dict[str, Any]


def _read_jsonl(path: Path) -> tuple[list[Row], list[str]]:
    rows, problems = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name} line {n}: not valid JSON ({json_error(exc)}); "
                                "each line must be one JSON object")
                continue
            if not isinstance(value, dict):
                problems.append(f"{path.name} line {n}: expected a JSON object, got "
                                f"{type(value).__name__}")
                continue
            rows.append(Row(f"{path.name} line {n}", value))
    return rows, problems


def json_error(exc: json.JSONDecodeError) -> str:
    """"Expecting value at column 5"; Python's "Unterminated string starting at" already ends
    in "at", so it reads "... starting at column 5", not "at at"."""
    sep = " " if exc.msg.endswith(" at") else " at "
    return f"{exc.msg}{sep}column {exc.colno}"


def _read_json(path: Path) -> tuple[list[Row], list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSONL file named .json
            return _read_jsonl(path)
        return [], [f"{path.name} line {exc.lineno}: not valid JSON ({json_error(exc)})"]
    if isinstance(value, dict):
        # {"data": [{...}, ...]}: one list of rows under a wrapper key is read as the rows.
        wrapped = [k for k, v in value.items() if isinstance(v, list) and v
                   and all(isinstance(x, dict) for x in v)]
        if len(wrapped) != 1 or any(k in ROW_KEYS for k in value):
            keys = ", ".join(list(value)[:8]) or "none"
            return [], [f"{path.name}: holds a single JSON object (keys: {keys}), not a list of "
                        "rows; write the rows as a list [{...}, {...}] or as JSONL, one object "
                        "a line"]
        value = value[wrapped[0]]
    if not isinstance(value, list):
        return [], [f"{path.name}: expected a list of JSON objects, got "
                    f"{type(value).__name__}"]
    rows, problems = [], []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            rows.append(Row(f"{path.name} item {i}", item))
        else:
            problems.append(f"{path.name} item {i}: expected a JSON object, got "
                            f"{type(item).__name__}")
    return rows, problems


def _read_csv(path: Path) -> tuple[list[Row], list[str]]:
    rows, problems = [], []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            return [], [f"{path.name}: no header row; the first line must name the columns"]
        for record in reader:
            line = reader.line_num
            if None in record:
                problems.append(f"{path.name} line {line}: more values than header columns "
                                "(quote fields that contain commas)")
                continue
            rows.append(Row(f"{path.name} line {line}", dict(record.items())))
    return rows, problems


def _read_parquet(path: Path) -> tuple[list[Row], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many kinds
        return [], [f"{path.name}: cannot read Parquet ({exc})"]
    return [Row(f"{path.name} row {i}", r) for i, r in enumerate(table.to_pylist())], []


def _read_txt(path: Path) -> tuple[list[Row], list[str]]:
    """Plain text: one sample per block of lines separated by a blank line."""
    rows: list[Row] = []
    block: list[str] = []
    start = 1
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    for n, line in enumerate([*lines, ""], 1):
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            rows.append(Row(f"{path.name} line {start}", {"text": "\n".join(block)}))
            block = []
    return rows, []


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
           ".parquet": _read_parquet, ".txt": _read_txt}


def dataset_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"dataset folder {path} holds no {', '.join(SUFFIXES)} files",
                            code="bad_data")
        return files
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"dataset file {path} has an unsupported type {path.suffix!r}",
                        f"use one of {', '.join(SUFFIXES)}", code="bad_data")
    return [path]


def _read_hub(dataset_id: str, split: str) -> list[Row]:
    from engine.models import go_offline_unless_hub_reachable

    go_offline_unless_hub_reachable()
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, bad split
        raise UserError(
            f"dataset {dataset_id!r} is not a local file or folder and could not be loaded "
            f"from the hub ({type(exc).__name__}: {str(exc)[:200]})",
            "check the path or id; hub datasets need a network connection once",
            code="bad_data") from None
    return [Row(f"{dataset_id} row {i}", dict(r)) for i, r in enumerate(ds)]


def is_hub_dataset_id(source: str) -> bool:
    """``owner/name`` that is no local file or folder (and has no data file suffix)."""
    parts = source.split("/")
    path = resources.locate(source)
    return (len(parts) == 2 and all(parts) and not path.exists()
            and path.suffix.lower() not in SUFFIXES)


def check_dataset_source(source: str) -> None:
    """UserError unless ``source`` is an existing file or folder of a readable type, or a hub
    id. Reads no rows: fast, so a run can check it before it creates its folder."""
    if not source:
        raise UserError("dataset.path is empty", "pick a dataset file or folder",
                        code="bad_data")
    path = resources.locate(source)  # resources/datasets/... is found from any folder
    if path.exists():
        dataset_files(path)
    elif not is_hub_dataset_id(source):
        raise UserError(f"dataset {source} does not exist", "check the path", code="bad_data")


def read_rows(source: str, split: str = "train") -> list[Row]:
    """All rows of a file, folder or hub dataset; raises DataError listing unreadable rows."""
    check_dataset_source(source)
    path = resources.locate(source)
    if not path.exists():
        return _read_hub(source, split)
    rows: list[Row] = []
    problems: list[str] = []
    for file in dataset_files(path):
        try:
            got, bad = READERS[file.suffix.lower()](file)
        except UnicodeDecodeError as exc:
            got, bad = [], [f"{file.name}: not UTF-8 text (byte {exc.start}); save it as UTF-8"]
        rows += got
        problems += bad
    if problems:
        raise DataError(f"dataset {source}: {len(problems)} unreadable row(s)", problems,
                        "fix or delete those rows")
    if not rows:
        raise DataError(f"dataset {source} has no rows", [], "add some examples")
    return rows
