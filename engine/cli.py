"""``python -m engine VERB``: the command line every GUI job runs through.

Each verb lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their verb is used, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from engine.errors import UserError

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "train": ("engine.train_cli", "run a job file: train JOB.yaml [--run-dir DIR] [--resume]"),
    "data": ("engine.data.cli", "inspect a dataset: format, rows, token lengths, problems"),
    "advise": ("engine.advisor.cli", "predict peak memory per method and recommend one"),
    "explain": ("engine.explain", "print the architecture map: what a method trains"),
    "export": ("engine.export.cli", "write the adapter, a merged model or a GGUF file"),
    "evaluate": ("engine.evaluate", "held-out loss, perplexity and answers: base vs tuned"),
    "compare": ("engine.compare", "train each method briefly on the job and compare them"),
    "chat": ("engine.chat", "chat with base and tuned models (JSON lines on stdin/stdout)"),
    "prepare-defaults": ("engine.models", "convert the built-in default models into the cache"),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown verb {argv[0]!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
            parser.print_help(sys.stderr)
            return 2
        parser.print_help()
        return 0
    verb, rest = argv[0], argv[1:]
    module_name, help_text = VERBS[verb]
    verb_parser = argparse.ArgumentParser(prog=f"python -m engine {verb}", description=help_text)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module_name.split(".")[0]):
            print(f"error: the {verb!r} verb is not available in this build", file=sys.stderr)
            return 2
        raise
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _not_kernels_hint(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' "pip install kernels" warning: on an AVX-512 BF16 CPU it is
    logged when bitsandbytes is imported, for any run (a plain LoRA one too), about an optional
    faster 4-bit kernel that 4-bit on the CPU works without."""
    return "pip install kernels" not in record.getMessage()


def quiet_bitsandbytes() -> None:
    """Drop bitsandbytes' "pip install kernels" warning (the GUI calls this too)."""
    logging.getLogger(BNB_CPU_LOGGER).addFilter(_not_kernels_hint)


def quiet_libraries() -> None:
    """Keep library chatter off the terminal: our own progress reports replace it."""
    quiet_bitsandbytes()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.utils\.checkpoint")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
