"""K-quant GGUF (Q4_K_M, Q5_K_M) through llama.cpp's quantizer: the size is predicted before
any weight loads, a missing quantizer is refused with the way to get it, and (when
llama-cpp-python is installed) the quantized file loads back close to the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import lora_run, small_model_dirs  # noqa: F401  (fixtures)

from engine.errors import UserError


def test_predicted_sizes_follow_llama_cpp_bits_per_weight() -> None:
    from engine.export._quant import gguf_size_text, predicted_bytes

    n = 8_030_261_248  # Llama-3.1-8B
    assert predicted_bytes(n, "f16") == 2 * n
    assert predicted_bytes(n, "q8_0") == n * 34 // 32
    assert 4.8e9 < predicted_bytes(n, "q4_k_m") < 5.0e9  # the ~4.9 GB users expect
    assert predicted_bytes(n, "q4_k_m") < predicted_bytes(n, "q5_k_m") < predicted_bytes(
        n, "q8_0")
    assert gguf_size_text(n, "q4_k_m") == "4.91 GB"
    assert gguf_size_text(135_000_000, "q4_k_m") == "83 MB"


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is not None,
                    reason="llama-cpp-python is installed: the quantizer is available")
@pytest.mark.parametrize("gguf_type", ["q4_k_m", "q5_k_m"])
def test_missing_quantizer_is_refused_with_the_way_to_get_it(
        gguf_type: str, lora_run: Path, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main
    from engine.export import export_run

    with pytest.raises(UserError, match=f"--gguf-type {gguf_type} needs llama.cpp") as info:
        export_run(lora_run, tmp_path / "out", gguf=True, gguf_type=gguf_type)
    assert info.value.code == "gguf_quantizer_missing"
    assert "pip install 'tunesmith[gguf-quant]'" in str(info.value.advice)
    assert not (tmp_path / "out").exists()
    rc = main(["export", str(lora_run), "--out", str(tmp_path / "cli"), "--gguf",
               "--gguf-type", gguf_type])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tunesmith[gguf-quant]" in err and "Traceback" not in err


def test_predicted_size_is_told_before_the_export(lora_run: Path, tmp_path: Path,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    rc = main(["export", str(lora_run), "--out", str(tmp_path / "out"), "--gguf",
               "--gguf-type", "q8_0", "--events-stdout"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    told = next(i for i, e in enumerate(lines)
                if "GGUF file will be about" in str(e.get("message", "")))
    assert told < next(i for i, e in enumerate(lines)
                       if str(e.get("message", "")).startswith("writing"))


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="needs llama-cpp-python (pip install 'tunesmith[gguf-quant]')")
@pytest.mark.parametrize("gguf_type", ["q4_k_m", "q5_k_m"])
def test_k_quant_export_round_trip(gguf_type: str, lora_run: Path,  # noqa: F811
                                   tmp_path: Path) -> None:
    import gguf

    from engine.export import export_run

    results = export_run(lora_run, tmp_path / "out", gguf=True, gguf_type=gguf_type)
    path = Path(results[-1].path)
    assert path.name.endswith(f"-{gguf_type}.gguf") and path.is_file()
    reader = gguf.GGUFReader(str(path))
    types = {t.tensor_type.name for t in reader.tensors}
    assert types & {"Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0", "Q5_1", "Q8_0"}
    assert not list((tmp_path / "out").glob("*f16*"))  # the intermediate is gone
