"""K-quant GGUF types (Q4_K_M, Q5_K_M) through llama.cpp's own quantizer, reached through the
optional ``llama-cpp-python`` package (``pip install 'tunesmith[gguf-quant]'``, which builds
llama.cpp). Tunesmith writes the f16 GGUF itself, checks it, then asks llama.cpp to quantize
it: the mixes (which tensors get Q6_K, which Q4_K) are llama.cpp's, not re-implemented here."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from engine.errors import UserError

# --gguf-type -> llama.h's enum llama_ftype (LLAMA_FTYPE_MOSTLY_Q4_K_M = 15, _Q5_K_M = 17)
QUANT_TYPES = {"q4_k_m": 15, "q5_k_m": 17}
ALL_GGUF_TYPES = ("f16", "q8_0", *QUANT_TYPES)  # f16, q8_0: written by Tunesmith itself
# Bits per weight llama.cpp reports for these mixes on Llama-3-8B (tools/quantize README:
# Q4_K_M 4.89, Q5_K_M 5.70); f16 is 16 and q8_0 8.5 exactly. Used to predict sizes.
BITS_PER_WEIGHT = {"f16": 16.0, "q8_0": 8.5, "q4_k_m": 4.89, "q5_k_m": 5.70}
INSTALL_HINT = ("install llama.cpp's quantizer: pip install 'tunesmith[gguf-quant]' (it builds "
                "llama-cpp-python from source: needs cmake and a C++ compiler, and takes a "
                "while on few cores), or export --gguf-type f16 and run llama.cpp's "
                "llama-quantize on the file")


def quantizer_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def predicted_bytes(n_params: int, gguf_type: str) -> int:
    """The GGUF file's size for ``n_params`` weights, before any is written."""
    return int(n_params * BITS_PER_WEIGHT[gguf_type] / 8)


def gguf_size_text(n_params: int, gguf_type: str) -> str:
    size = predicted_bytes(n_params, gguf_type)
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def require_quantizer(gguf_type: str) -> None:
    """UserError (exit 2) naming the way to get the quantizer, before any heavy work."""
    if gguf_type in QUANT_TYPES and not quantizer_available():
        raise UserError(f"--gguf-type {gguf_type} needs llama.cpp's quantizer, which is not "
                        "installed", INSTALL_HINT, code="gguf_quantizer_missing")


def quantize(source: Path, target: Path, gguf_type: str) -> None:
    """llama.cpp's llama_model_quantize: ``source`` (an f16 GGUF) -> ``target``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[gguf_type]
    params.nthread = 0  # llama.cpp picks the core count
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                            ctypes.byref(params))
    if status != 0:
        raise UserError(f"llama.cpp could not quantize {source.name} to {gguf_type} "
                        f"(llama_model_quantize returned {status})",
                        "export --gguf-type f16 and run llama.cpp's llama-quantize on it",
                        code="gguf_quantize_failed")


def gguf_size_hint(run_dir: str | Path, gguf_type: str) -> str:
    """One line for a GUI or CLI before an export: the predicted file size, or, for a k-quant
    type without llama.cpp's quantizer, how to get it."""
    from engine.export._run import open_run

    if gguf_type in QUANT_TYPES and not quantizer_available():
        return f"{gguf_type} needs llama.cpp's quantizer: {INSTALL_HINT}"
    try:
        n = open_run(run_dir).base_param_count()
    except (UserError, OSError, ValueError):
        return ""
    return f"the {gguf_type} GGUF file will be about {gguf_size_text(n, gguf_type)}"
