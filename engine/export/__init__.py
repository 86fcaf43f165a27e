"""Export a run: the adapter, a merged 16-bit model, a GGUF file for llama.cpp and Ollama.

``export_run`` is the whole export as a function; ``python -m engine export`` calls it.
``open_run`` / ``load_pair`` load a run's trained model for evaluate and chat.
"""

from __future__ import annotations

from engine.export._events import Exported
from engine.export._export import (
    EXPORT_MARKER,
    check_disk_space,
    check_target,
    estimate_bytes,
    export_run,
    foreign_contents,
    is_export_folder,
)
from engine.export._merge import ExportCheckFailed
from engine.export._quant import ALL_GGUF_TYPES, gguf_size_hint, quantizer_available
from engine.export._run import LoadedPair, RunInfo, load_pair, load_tokenizer, open_run

__all__ = [
    "ALL_GGUF_TYPES",
    "EXPORT_MARKER",
    "ExportCheckFailed",
    "Exported",
    "LoadedPair",
    "RunInfo",
    "check_disk_space",
    "check_target",
    "estimate_bytes",
    "export_run",
    "foreign_contents",
    "gguf_size_hint",
    "is_export_folder",
    "load_pair",
    "load_tokenizer",
    "open_run",
    "quantizer_available",
]
