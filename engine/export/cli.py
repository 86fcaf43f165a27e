"""``python -m engine export RUN_DIR --out DIR [--merge] [--gguf] [--overwrite]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from engine import events as ev
from engine.export._quant import ALL_GGUF_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run folder (runs/<name>-<timestamp>)")
    parser.add_argument("--out", required=True, help="folder to write (new or empty)")
    parser.add_argument("--merge", action="store_true",
                        help="fold the adapter into the base: a standalone 16-bit model")
    parser.add_argument("--gguf", action="store_true",
                        help="also write a GGUF file and an Ollama Modelfile (llama family)")
    parser.add_argument("--gguf-type", default="f16",
                        choices=ALL_GGUF_TYPES,
                        help="GGUF weight type (default f16); q4_k_m and q5_k_m use llama.cpp's "
                             "quantizer: pip install 'tunesmith[gguf-quant]'")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="weight type of the merged model (default bfloat16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it holds an earlier export (never other files)")
    parser.add_argument("--events-stdout", action="store_true",
                        help="write events as JSON lines on stdout (for the GUI and scripts)")


def _print_event(event: Any) -> None:
    if isinstance(event, ev.Progress):
        print(f"… {event.message}", file=sys.stderr, flush=True)
    elif isinstance(event, ev.Warning):
        print(f"warning: {event.message}", file=sys.stderr, flush=True)


class _JsonLines:
    """Events as JSON lines on the real stdout; anything else printed goes to stderr."""

    def __init__(self) -> None:
        self.stream = sys.stdout

    def __call__(self, event: Any) -> None:
        self.stream.write(json.dumps(dataclasses.asdict(event), ensure_ascii=False) + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries

    quiet_libraries()
    if not args.events_stdout:
        return _run(args, _print_event)
    emit = _JsonLines()
    sys.stdout = sys.stderr  # stdout carries only event lines
    try:
        return _run(args, emit)
    finally:
        sys.stdout = emit.stream


def _run(args: argparse.Namespace, emit: Any) -> int:
    from engine.errors import UserError
    from engine.export import ExportCheckFailed, export_run

    try:
        results = export_run(args.run_dir, args.out, merge=args.merge, gguf=args.gguf,
                             gguf_type=args.gguf_type, dtype=args.dtype,
                             overwrite=args.overwrite, emit=emit)
    except UserError as exc:
        if args.events_stdout:
            emit(ev.Error(code=exc.code, message=exc.message, advice=exc.advice))
        raise
    except ExportCheckFailed as exc:
        if args.events_stdout:
            emit(ev.Error(code="export_check_failed", message=str(exc)))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.events_stdout:
        for r in results:
            diff = "" if r.max_logit_diff is None else f" (max logit diff {r.max_logit_diff:.2e})"
            print(f"{r.kind}: {r.path}{diff}")
            for note in r.notes:
                print(f"  - {note}")
    return 0
