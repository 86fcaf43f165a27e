"""``export_run``: write a run's result as an adapter folder, a merged model and/or a GGUF file.

Everything is written into a staging folder beside the target, then renamed into place, so a
failure (or a failed check) never leaves a half-written export behind. Every export folder
carries ``EXPORT_MARKER``; ``--overwrite`` replaces only such a folder, and nothing outside the
target is ever deleted but the staging and old folders this export made (fresh names: a
sibling of the user's that happens to look like one is left alone).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine import runs
from engine.errors import UserError
from engine.events import EventSink, Progress
from engine.export._events import Exported
from engine.export._run import RunInfo, open_run

# Files of a training checkpoint that are not part of an adapter.
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin",
                   "README.md", "scaler.pt")
DEMO_PROMPT = "Tell me about yourself in one sentence."
ADAPTER_CONFIG = "adapter_config.json"  # peft's file name; the bottleneck adapter uses it too
EXPORT_MARKER = "tunesmith-export.json"  # written into every export folder


def is_export_folder(folder: str | Path) -> bool:
    """True when ``folder`` is an export Tunesmith wrote (it carries the marker file)."""
    marker = Path(folder) / EXPORT_MARKER
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("tunesmith_export"))
    except (OSError, ValueError, AttributeError):
        return False


def export_run(run_dir: str | Path, out: str | Path, *, merge: bool = False, gguf: bool = False,
               gguf_type: str = "f16", dtype: str = "bfloat16", overwrite: bool = False,
               emit: EventSink | None = None) -> list[Exported]:
    """Export the trained result of ``run_dir`` into the folder ``out``.

    Without ``merge``/``gguf`` the folder is the PEFT adapter (full fine-tuning: the model).
    ``merge`` writes a merged 16-bit model; ``gguf`` writes ``<name>-<type>.gguf`` and an
    Ollama ``Modelfile``. Returns one :class:`Exported` event per result (also emitted).
    """
    from engine.export._merge import torch_dtype
    from engine.export._quant import ALL_GGUF_TYPES, gguf_size_text, require_quantizer
    from engine.models import remote_code_warning

    sink: EventSink = emit or (lambda _e: None)
    info = open_run(run_dir)
    malformed: list[int] = []
    runs.run_events(info.run_dir, malformed)
    warning = runs.malformed_warning(info.run_dir / runs.EVENTS_FILE, malformed)
    if warning is not None:
        sink(warning)
    if gguf_type not in ALL_GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r} is not one of {', '.join(ALL_GGUF_TYPES)}")
    if gguf:
        require_quantizer(gguf_type)
    torch_dtype(dtype)
    refusal = info.merge_refusal()
    if (merge or gguf) and refusal:
        raise UserError(f"run {info.run_dir.name} cannot be merged: {refusal}",
                        "export it without --merge and --gguf to get the adapter",
                        code="not_mergeable")
    warning = remote_code_warning(info.job) if merge or gguf or info.is_full else None
    if warning is not None:
        sink(warning)  # the base model's own code runs to merge or convert it
    if gguf:
        _check_gguf_supported(info)
    target = check_target(info, Path(out), overwrite)
    merge = merge or (info.is_full and not gguf)
    needed = estimate_bytes(info, merge=merge, gguf=gguf, gguf_type=gguf_type, dtype=dtype)
    check_disk_space(target, needed)
    if gguf:
        sink(Progress(stage="export", current=0, total=1,
                      message=f"the {gguf_type} GGUF file will be about "
                              f"{gguf_size_text(info.base_param_count(), gguf_type)}"))
    staging = _fresh_sibling(target, "partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        results = _write(info, staging, target, merge=merge, gguf=gguf, gguf_type=gguf_type,
                         dtype=dtype, refusal=refusal, emit=sink)
        _write_marker(staging, info, results)
        make_readable(staging)
        _replace(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if runs.is_disk_full(exc):  # the disk filled up while writing: the old export stays
            raise runs.disk_full(target.parent, needed, "export again") from None
        raise
    for event in results:
        sink(event)
    return results


# --------------------------------------------------------------------------- refusals


def _check_gguf_supported(info: RunInfo) -> None:
    from engine.export._gguf import check_supported
    from engine.export._run import load_tokenizer
    from engine.models import load_config

    check_supported(load_config(info.base_folder(),
                                trust_remote_code=info.job.model.trust_remote_code),
                    load_tokenizer(info))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(info: RunInfo, out: Path, overwrite: bool) -> Path:
    """The resolved target; UserError for the base folder, the run folder, or a full folder."""
    target = out.expanduser().resolve()
    protected = {"the base model's folder": _base_paths(info),
                 "the run folder": [info.run_dir.resolve()]}
    for what, folders in protected.items():
        for folder in folders:
            if _inside(target, folder) or _inside(folder, target):
                raise UserError(f"--out {out} is {what} ({folder}) or overlaps it; an export "
                                "never writes there", "pick a new folder, e.g. exports/my-model",
                                code="bad_target")
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {out} is a file", "pick a folder", code="bad_target")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty",
                            "pick an empty or new folder, or pass --overwrite to replace it",
                            code="target_not_empty")
        foreign = foreign_contents(target)
        if foreign is not None:
            raise UserError(f"--out {out} holds files Tunesmith did not write "
                            f"({foreign}); --overwrite replaces only an earlier "
                            f"export (a folder with {EXPORT_MARKER})",
                            "pick an empty or new folder, or move those files away first",
                            code="target_not_export")
    return target


def foreign_contents(folder: str | Path, most: int = 5) -> str | None:
    """What a non-empty folder that is not an export holds ("a.txt, data/ and 3 more"), or
    None when an export may replace it (missing, empty, or an earlier export)."""
    folder = Path(folder)
    if not folder.is_dir() or is_export_folder(folder):
        return None
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return None
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _base_paths(info: RunInfo) -> list[Path]:
    paths = []
    source = Path(info.job.model.source).expanduser()
    if source.suffix == ".gguf":
        paths.append(source.resolve().parent)
    elif source.is_dir():
        paths.append(source.resolve())
    try:
        folder = Path(info.base_folder())
        if folder.is_dir():
            paths.append(folder.resolve())
    except UserError:
        pass
    return paths


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def estimate_bytes(info: RunInfo, *, merge: bool, gguf: bool, gguf_type: str, dtype: str) -> int:
    """Bytes an export writes, with a margin (tokenizer files, card, rounding)."""
    from engine.export._quant import QUANT_TYPES, predicted_bytes

    total = _folder_bytes(info.result) if not (merge or gguf) else 0
    if merge or gguf:
        n = info.base_param_count()
        if merge:
            total += n * (4 if dtype == "float32" else 2)
        if gguf:
            total += predicted_bytes(n, gguf_type)
            if gguf_type in QUANT_TYPES:
                total += predicted_bytes(n, "f16")  # the checked f16 it is quantized from
    return int(total * 1.1) + 64 * 2**20


def check_disk_space(target: Path, needed: int) -> None:
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise UserError(f"not enough free disk space for this export at {probe}: it needs about "
                        f"{needed / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free",
                        "free some space or pick --out on another disk", code="disk_full")


# --------------------------------------------------------------------------- writing


def _write(info: RunInfo, staging: Path, target: Path, *, merge: bool, gguf: bool,
           gguf_type: str, dtype: str, refusal: str | None, emit: EventSink) -> list[Exported]:
    from engine.export._card import model_card

    notes = []
    if info.from_checkpoint:
        notes.append(f"the run did not finish: exported from {info.result.name}")
    results: list[Exported] = []
    if merge or gguf:
        results += _write_merged(info, staging, target, merge=merge, gguf=gguf,
                                 gguf_type=gguf_type, dtype=dtype, notes=notes, emit=emit)
    else:
        emit(Progress(stage="export", current=0, total=1, message="copying the adapter"))
        files = _copy_adapter(info.result, staging, info.job.model.source)
        if refusal:
            notes.append(f"exported as an adapter, not merged: {refusal}")
        results.append(Exported(path=str(target), kind="adapter", files=files, notes=notes))
    kinds = [r.kind for r in results]
    kind = "adapter" if "adapter" in kinds else "merged" if "merged" in kinds else "gguf"
    card = model_card(info, kind=kind, exports=[asdict(r) for r in results], notes=notes)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return [_with_card(r) for r in results]


def _with_card(event: Exported) -> Exported:
    if event.kind == "gguf" or "README.md" in event.files:
        return event
    return Exported(**{**asdict(event), "files": sorted([*event.files, "README.md"])})


def _copy_adapter(result: Path, staging: Path, source: str) -> list[str]:
    files = []
    for f in sorted(result.iterdir()):
        if f.is_file() and f.name not in _TRAINING_STATE and not f.name.startswith("rng_state"):
            shutil.copy2(f, staging / f.name)
            files.append(f.name)
    _name_the_base(staging / ADAPTER_CONFIG, source)
    return files


def _name_the_base(config_file: Path, source: str) -> None:
    """The adapter config names the base by its hub id (training wrote the local cache path,
    which fails on any other machine); a local base keeps its path (the card says so)."""
    from engine.models import base_identity

    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "base_model_name_or_path" in config:
        config["base_model_name_or_path"] = base_identity(source).name_or_path
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                               encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(folder: Path) -> None:
    """Files as any other file the user writes (0644 under the usual umask 022), not the
    owner-only 0600 that safetensors' temporary files leave: a copied export must open for
    another user or a container."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _write_merged(info: RunInfo, staging: Path, target: Path, *, merge: bool, gguf: bool,
                  gguf_type: str, dtype: str, notes: list[str],
                  emit: EventSink) -> list[Exported]:
    from engine.export._merge import generation_config, merge_run, save_merged
    from engine.export._run import load_tokenizer, pick_device
    from engine.export._stops import stop_token_ids

    tokenizer = load_tokenizer(info)
    device = pick_device(info)
    merged = merge_run(info, tokenizer, device, emit)
    gen = generation_config(info, merged.model, tokenizer,
                            stop_token_ids(tokenizer, merged.model.config.eos_token_id))
    stops = [int(i) for i in ([gen.eos_token_id] if isinstance(gen.eos_token_id, int)
                              else gen.eos_token_id)]
    results = []
    if merge:
        emit(Progress(stage="export", current=0, total=1,
                      message=f"writing the merged model ({dtype})"))
        before = set(os.listdir(staging))
        save_merged(merged.model, tokenizer, staging, dtype, gen)
        files = sorted(set(os.listdir(staging)) - before)
        results.append(Exported(path=str(target), kind="merged",
                                max_logit_diff=merged.max_logit_diff, files=files,
                                notes=[*notes, *merged.notes,
                                       f"weights written as {dtype}; generation config "
                                       f"stops at token ids {stops}"]))
    if gguf:
        results.append(_write_gguf(info, merged.model, tokenizer, staging, target, gguf_type,
                                   stops, notes, emit))
    return results


def _write_gguf(info: RunInfo, model: Any, tokenizer: Any, staging: Path, target: Path,
                gguf_type: str, stops: list[int], notes: list[str],
                emit: EventSink) -> Exported:
    from engine.export._gguf import check_supported, verify_gguf, write_gguf
    from engine.export._merge import chat_inputs
    from engine.export._ollama import modelfile
    from engine.export._quant import QUANT_TYPES, quantize
    from engine.export._stops import end_of_turn_id, stop_strings

    check_supported(model.config, tokenizer)
    name = f"{info.job.name}-{gguf_type}.gguf"
    # Written and checked in a folder of its own: the loader must see only the GGUF file.
    gguf_dir = staging / ".gguf-check"
    gguf_dir.mkdir()
    path = gguf_dir / name
    emit(Progress(stage="export", current=0, total=1, message=f"writing {name}"))
    quantized = gguf_type in QUANT_TYPES
    written = gguf_dir / ".f16" / f"{info.job.name}-f16.gguf" if quantized else path
    written.parent.mkdir(exist_ok=True)
    facts = write_gguf(model, tokenizer, written, gguf_type="f16" if quantized else gguf_type,
                       name=info.job.name, stops=stops, end_of_turn=end_of_turn_id(tokenizer))
    emit(Progress(stage="export", current=0, total=1,
                  message="loading the GGUF file back to check it"))
    check = verify_gguf(written, model, tokenizer, chat_inputs(tokenizer),
                        "f16" if quantized else gguf_type, DEMO_PROMPT, stops)
    if quantized:  # llama.cpp quantizes the checked f16 file; the result is checked again
        emit(Progress(stage="export", current=0, total=1,
                      message=f"quantizing to {gguf_type} with llama.cpp"))
        quantize(written, path, gguf_type)
        written.unlink()
        written.parent.rmdir()
        check = verify_gguf(path, model, tokenizer, chat_inputs(tokenizer), gguf_type,
                            DEMO_PROMPT, stops)
        facts = {**facts, "type": gguf_type, "bytes": path.stat().st_size}
    os.replace(path, staging / name)
    gguf_dir.rmdir()
    text, more = modelfile(tokenizer, name, stop_strings(tokenizer, stops),
                           tokenizer.bos_token if facts.get("adds_bos") else None)
    (staging / "Modelfile").write_text(text, encoding="utf-8")
    if check["same_greedy_text"]:
        same = "the same greedy answer as the merged model"
    else:
        same = (f"a greedy answer that leaves the merged model's after "
                f"{check['greedy_common_chars']} characters")
    gguf_notes = [f"GGUF {gguf_type} ({facts['architecture']}, tokenizer pre "
                  f"{facts['tokenizer_pre']}): loaded back with transformers, next-token "
                  f"agreement {check['argmax_agreement']:.1%}, largest logit difference "
                  f"{check['max_logit_diff']:.2e} of {check['logit_scale']:.3g}, {same}", *more]
    return Exported(path=str(target / name), kind="gguf", max_logit_diff=check["max_logit_diff"],
                    files=[name, "Modelfile"], notes=[*notes, *gguf_notes],
                    details={**facts, **check})


def _fresh_sibling(target: Path, what: str) -> Path:
    """A new name beside ``target`` that nothing has (never a folder of the user's)."""
    while True:
        path = target.with_name(f".{target.name}.{what}-{uuid.uuid4().hex[:12]}")
        if not path.exists():
            return path


def _write_marker(staging: Path, info: RunInfo, results: list[Exported]) -> None:
    marker = {"tunesmith_export": 1, "run": str(info.run_dir.resolve()),
              "kinds": [r.kind for r in results], "time": round(time.time(), 3)}
    (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _replace(staging: Path, target: Path) -> None:
    """Put the finished export in place; an old one goes only after the new one is there.

    The old folder is moved aside under a fresh name and deleted only if it is still an
    export (check_target refused anything else); an empty folder is simply replaced.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    old = _fresh_sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)  # put the previous export back
        raise
    if is_export_folder(old) or not any(old.iterdir()):
        shutil.rmtree(old)
