"""``python -m engine chat RUN_DIR [--base-only]``: chat with the base and tuned models.

A child process speaking JSON lines: requests on stdin, events on stdout (one object a line,
``type`` first); everything else goes to stderr. The process holds the models until stdin
closes, so closing the chat frees all their memory.

Requests::

    {"id": 1, "messages": [{"role": "user", "content": "Hi"}], "model": "tuned",
     "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256}
    {"cancel": 1}

A mergeable adapter (LoRA, DoRA, IA³) is merged into a copy of the base in memory and checked
as ``export --merge`` checks it, and both models run in bf16 where the hardware computes it
natively (``ready`` says ``merged``, ``dtype`` and why in ``notes``); ``--no-merge`` keeps the
adapter unmerged, as trained.

``model`` is ``base``, ``tuned`` (default) or ``both`` (base, then tuned); temperature 0 is
greedy. Events: ``progress`` while loading, ``ready``, then per request ``chat_token``
(``id``, ``model``, ``text``) … ``chat_done`` (``id``, ``model``, ``text``, ``tokens``,
``tokens_per_s``, ``finish_reason``: stop | length | cancelled); ``error`` for a bad request
(with its ``id`` when known) or a failed load. Requests run one at a time, in order; a cancel
acts at once. EOF on stdin cancels what is running and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from engine.errors import UserError

DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256}
MAX_NEW_TOKENS = 8192
ROLES = ("system", "user", "assistant")


class BadRequest(ValueError):
    pass


@dataclasses.dataclass
class Request:
    id: Any
    messages: list[dict[str, str]]
    models: list[str]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None = None


def parse_request(data: Any, available: list[str]) -> Request:
    """Check one request; BadRequest names the field that is wrong."""
    if not isinstance(data, dict) or "id" not in data:
        raise BadRequest("a request is a JSON object with an id")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list of {role, content} is needed")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES \
                or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}]: needs role ({', '.join(ROLES)}) and content text")
    which = data.get("model", "tuned" if "tuned" in available else "base")
    models = ["base", "tuned"] if which == "both" else [which]
    for name in models:
        if name not in available:
            raise BadRequest(f"model: {name!r} is not loaded (loaded: {', '.join(available)})")
    settings = {k: data.get(k, v) for k, v in DEFAULTS.items()}
    try:
        temperature, top_p = float(settings["temperature"]), float(settings["top_p"])
        max_new = int(settings["max_new_tokens"])
        seed = None if data.get("seed") is None else int(data["seed"])
    except (TypeError, ValueError):
        raise BadRequest("temperature, top_p, max_new_tokens and seed must be numbers") from None
    if not 0 <= temperature <= 5:
        raise BadRequest("temperature: between 0 (greedy) and 5")
    if not 0 < top_p <= 1:
        raise BadRequest("top_p: above 0, at most 1")
    if not 1 <= max_new <= MAX_NEW_TOKENS:
        raise BadRequest(f"max_new_tokens: between 1 and {MAX_NEW_TOKENS}")
    return Request(data["id"], messages, models, temperature, top_p, max_new, seed)


class _Cancelled:
    """A StoppingCriteria that ends generate() when its flag is set."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class ChatSession:
    """Answers requests one at a time with the loaded models; cancel() may come from any
    thread."""

    def __init__(self, pair: Any, tokenizer: Any, stops: list[int], out: TextIO,
                 models: list[str]) -> None:
        self.pair = pair
        self.tokenizer = tokenizer
        self.stops = stops
        self.out = out
        self.models = models
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}
        self._cancelled: set[str] = set()
        self.closing = False  # stdin ended: cancel what runs, start nothing new

    # -- output -------------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False)
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def error(self, message: str, code: str = "bad_request", req_id: Any = None) -> None:
        event: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if req_id is not None:
            event["id"] = req_id
        self.send(event)

    # -- cancel -------------------------------------------------------------------------------

    def cancel(self, req_id: Any) -> None:
        key = json.dumps(req_id)
        with self._lock:
            self._cancelled.add(key)
            flag = self._flags.get(key)
        if flag is not None:
            flag.set()

    def cancel_all(self) -> None:
        with self._lock:
            flags = list(self._flags.values())
            self.closing = True
        for flag in flags:
            flag.set()

    # -- answering ----------------------------------------------------------------------------

    def handle(self, data: Any) -> None:
        try:
            req = parse_request(data, self.models)
        except BadRequest as exc:
            self.error(str(exc), req_id=data.get("id") if isinstance(data, dict) else None)
            return
        for which in req.models:
            self._answer(req, which)

    def _answer(self, req: Request, which: str) -> None:
        key = json.dumps(req.id)
        flag = threading.Event()
        with self._lock:
            if key in self._cancelled or self.closing:
                flag.set()
            self._flags[key] = flag
        try:
            self._generate(req, which, flag)
        except Exception as exc:  # e.g. out of memory: report it and keep the session alive
            self.error(f"{type(exc).__name__}: {exc}"[:2000], code="generation_failed",
                       req_id=req.id)
        finally:
            with self._lock:
                self._flags.pop(key, None)

    def _generate(self, req: Request, which: str, flag: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        tok = self.tokenizer
        text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        device = self.pair.device
        enc = tok(str(text), return_tensors="pt", add_special_tokens=False).to(device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            **enc, "streamer": streamer, "max_new_tokens": req.max_new_tokens,
            "eos_token_id": self.stops, "pad_token_id": tok.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([_Cancelled(flag)])}
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if req.seed is not None:
            torch.manual_seed(req.seed)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with self.pair.use(which) as model, torch.no_grad():
                    result["ids"] = model.generate(**kwargs)
            except BaseException as exc:
                result["error"] = exc
                streamer.end()

        start = time.perf_counter()
        worker = threading.Thread(target=work, name=f"generate-{req.id}", daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                self.send({"type": "chat_token", "id": req.id, "model": which, "text": piece})
        worker.join()
        if "error" in result:
            raise result["error"]
        elapsed = time.perf_counter() - start
        new = result["ids"][0, enc["input_ids"].shape[1]:].tolist()
        hit_stop = bool(new) and new[-1] in self.stops
        tokens = len(new) - int(hit_stop)
        reason = "cancelled" if flag.is_set() else "stop" if hit_stop else "length"
        self.send({"type": "chat_done", "id": req.id, "model": which, "text": "".join(pieces),
                   "tokens": tokens, "tokens_per_s": round(tokens / max(elapsed, 1e-9), 2),
                   "elapsed_s": round(elapsed, 3), "finish_reason": reason})


def _read_requests(lines: Iterable[str], session: ChatSession,
                   inbox: queue.Queue[Any]) -> None:
    """Reader thread: cancels act at once; other requests queue up; EOF ends the session."""
    for line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            session.error(f"not a JSON line: {exc}")
            continue
        if isinstance(data, dict) and "cancel" in data and "messages" not in data:
            session.cancel(data["cancel"])
        else:
            inbox.put(data)
    session.cancel_all()
    inbox.put(None)


def serve(run_dir: str | Path, *, lines: Iterable[str], out: TextIO,
          base_only: bool = False, merge: bool = True) -> int:
    """Load the run's models, say ``ready``, answer requests from ``lines`` until they end."""
    from engine.export import load_tokenizer, open_run
    from engine.export._fast import load_chat_pair
    from engine.export._stops import stop_token_ids

    start = time.perf_counter()

    def progress(event: Any) -> None:
        out.write(json.dumps(dataclasses.asdict(event), ensure_ascii=False) + "\n")
        out.flush()

    from engine.events import Progress

    info = open_run(run_dir, need_result=not base_only)
    tokenizer = load_tokenizer(info)
    what = "the base model" if base_only else "the base and tuned models"
    progress(Progress(stage="load_model", current=0, total=1, message=f"loading {what}"))
    pair = load_chat_pair(info, emit=progress, base_only=base_only, merge=merge)
    models = ["base"] if base_only else ["base", "tuned"]
    model = pair.tuned if pair.tuned is not None else pair.base_model
    stops = stop_token_ids(tokenizer, getattr(model.config, "eos_token_id", None))
    session = ChatSession(pair, tokenizer, stops, out, models)
    session.send({"type": "ready", "run_dir": str(info.run_dir), "method": info.method,
                  "models": models, "device": pair.device,
                  "chat_template": bool(getattr(tokenizer, "chat_template", None)),
                  "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stops],
                  "defaults": DEFAULTS, "merged": pair.merged, "dtype": pair.dtype,
                  "notes": pair.notes, "load_s": round(time.perf_counter() - start, 2)})
    inbox: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read_requests, args=(lines, session, inbox), daemon=True,
                     name="chat-stdin").start()
    while (data := inbox.get()) is not None:
        if session.closing:
            break
        session.handle(data)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run folder (runs/<name>-<timestamp>)")
    parser.add_argument("--base-only", action="store_true",
                        help="load only the base model (works before the run has a result)")
    parser.add_argument("--no-merge", action="store_true",
                        help="run the adapter unmerged, as trained (slower; by default a "
                             "mergeable adapter is merged in memory, checked, and both models "
                             "run in bf16 where the hardware has it)")


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries

    quiet_libraries()
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries only JSON lines
    try:
        return serve(args.run_dir, lines=sys.stdin, out=out, base_only=args.base_only,
                     merge=not args.no_merge)
    except UserError as exc:
        out.write(json.dumps({"type": "error", "code": exc.code, "message": exc.message,
                              "advice": exc.advice}, ensure_ascii=False) + "\n")
        out.flush()
        raise
    finally:
        sys.stdout = out
