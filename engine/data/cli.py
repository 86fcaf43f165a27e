"""``python -m engine data PATH``: is this dataset usable, and what will the model see?"""

from __future__ import annotations

import argparse
import json

from engine.config import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a file, a folder of files, or a hub dataset id")
    parser.add_argument("--format", default="auto", choices=FORMATS)
    parser.add_argument("--model", default=None,
                        help="tokenize with this model for token-length stats and a preview")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--overflow", default="truncate", choices=("truncate", "drop"))
    parser.add_argument("--task", default="sft", choices=("sft", "classify"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _histogram(lengths: list[int], max_length: int, width: int = 40) -> list[str]:
    if not lengths:
        return []
    top = max(max(lengths), max_length)
    edges = [round(top * i / 10) for i in range(11)]
    counts = [0] * 10
    for n in lengths:
        counts[min(9, n * 10 // max(top, 1))] += 1
    peak = max(counts) or 1
    lines = []
    for i, c in enumerate(counts):
        mark = " ← max_length" if edges[i] < max_length <= edges[i + 1] else ""
        bar = "█" * round(width * c / peak)
        lines.append(f"  {edges[i]:>6}-{edges[i + 1]:<6} {bar} {c}{mark}")
    return lines


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries
    from engine.data import inspect_dataset

    quiet_libraries()
    report = inspect_dataset(args.path, format=args.format, model_source=args.model,
                             max_length=args.max_length, overflow=args.overflow, task=args.task)
    if args.json:
        out = report.to_dict()
        out["preview"] = [[{"text": t, "trained": b} for t, b in row] for row in report.preview]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 2 if report.problems else 0
    how = "detected" if report.detected else "as set"
    print(f"{report.path}: format {report.format} ({how}), {report.rows} rows")
    if report.labels:
        print("labels: " + ", ".join(f"{k} ({v})" for k, v in sorted(report.labels.items())))
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            print(f"  - {p}")
        print("  → fix those rows, or pass --format if the detection is wrong")
        return 2
    stats = report.to_dict()["token_lengths"]
    if stats:
        print("tokens per sample: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        print("\n".join(_histogram(report.lengths, report.max_length)))
        verb = "dropped" if args.overflow == "drop" else "truncated"
        count = report.dropped if args.overflow == "drop" else report.truncated
        print(f"{count} of {report.rows} samples longer than {report.max_length} tokens "
              f"would be {verb}")
    if report.preview:
        print("\nfirst sample as the model sees it ([[trained]] tokens carry the loss):")
        print("".join(f"[[{t}]]" if trained else t for t, trained in report.preview[0]))
    return 0
