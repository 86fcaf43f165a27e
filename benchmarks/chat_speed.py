"""Chat speed: ``engine chat`` against plain ``generate()`` on the merged model, same dtype.

    python benchmarks/chat_speed.py [--runs 3] [--tokens 40] [--run RUN_DIR] [--json OUT]

Without ``--run`` it first trains a short LoRA run (r16, all linear layers, 4 steps) of the
offline default model on the demo data. Then, interleaved, ``--runs`` times each:

- ``chat``: the chat server as the GUI runs it (``engine.chat.serve``: adapter merged in memory,
  weights in the hardware's fast dtype), 40 new greedy tokens, tokens/s from its ``chat_done``;
- ``chat --no-merge``: the same server with the adapter unmerged, as trained (the old path);
- ``plain generate``: the run exported with ``export --merge`` and loaded with
  ``AutoModelForCausalLM.from_pretrained(dtype=<the chat's dtype>)``, ``generate()`` greedy with
  the KV cache, timed the same way (first token to last, prompt included).
- ``llama.cpp`` on the exported f16 GGUF, when ``llama_cpp`` is importable.

Every side answers the same prompt greedily with at most 40 new tokens (each stops at the
model's end of turn, as a user's would) and is scored in new tokens per second of its own
generation. Reports medians and the ratio chat / plain generate (goal ≥ 1.0).
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Tell me a long story about a ship and its crew."


def train_default_run(root: Path) -> Path:
    from engine import events as ev
    from engine import runs
    from engine.config import job_from_dict
    from engine.training import run_training

    job = job_from_dict({
        "name": "chat-bench", "model": {"source": "smollm2-135m-instruct"},
        "dataset": {"path": str(ROOT / "resources/datasets/pirate-persona.jsonl"),
                    "max_length": 256},
        "method": {"name": "lora", "r": 16, "alpha": 32, "target_modules": ["all-linear"]},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3},
        "output": {"runs_dir": str(root / "runs")}})
    run_dir = root / "runs" / "chat-bench"
    writer = ev.EventWriter(run_dir / runs.EVENTS_FILE)
    try:
        run_training(job, run_dir=run_dir, emit=writer)
    finally:
        writer.close()
    return run_dir


class _Lines:
    def __init__(self) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()

    def __iter__(self) -> Any:
        while (line := self.q.get()) is not None:
            yield line


class _Out:
    def __init__(self) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.buf = ""

    def write(self, text: str) -> None:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.q.put(json.loads(line))

    def flush(self) -> None:
        pass

    def until(self, kind: str) -> dict[str, Any]:
        while (event := self.q.get(timeout=600))["type"] != kind:
            if event["type"] == "error":
                raise RuntimeError(event["message"])
        return event


class ChatServer:
    """``engine.chat.serve`` in a thread, as the GUI's child runs it."""

    def __init__(self, run_dir: Path, merge: bool, tokens: int) -> None:
        import engine.chat as chat

        self.lines, self.out, self.tokens = _Lines(), _Out(), tokens
        self.thread = threading.Thread(target=chat.serve, args=(run_dir,), daemon=True,
                                       kwargs={"lines": self.lines, "out": self.out,
                                               "merge": merge})
        self.thread.start()
        self.ready = self.out.until("ready")
        self.n = 0

    def tokens_per_s(self) -> float:
        self.n += 1
        self.lines.q.put(json.dumps({"id": self.n, "model": "tuned", "temperature": 0,
                                     "max_new_tokens": self.tokens,
                                     "messages": [{"role": "user", "content": PROMPT}]}))
        done = self.out.until("chat_done")
        return float(done["tokens"]) / float(done["elapsed_s"])

    def close(self) -> None:
        self.lines.q.put(None)
        self.thread.join(60)


class PlainGenerate:
    """What a user would write on the merged export: from_pretrained + generate()."""

    def __init__(self, folder: Path, dtype: str, tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype)).eval()
        text = self.tok.apply_chat_template([{"role": "user", "content": PROMPT}],
                                            tokenize=False, add_generation_prompt=True)
        self.enc = self.tok(text, return_tensors="pt", add_special_tokens=False)
        self.tokens = tokens

    def tokens_per_s(self) -> float:
        start = time.perf_counter()
        with self.torch.no_grad():
            out = self.model.generate(**self.enc, max_new_tokens=self.tokens, do_sample=False,
                                      use_cache=True, pad_token_id=self.tok.pad_token_id)
        elapsed = time.perf_counter() - start
        return (out.shape[1] - self.enc["input_ids"].shape[1]) / elapsed


class LlamaCpp:
    def __init__(self, gguf: Path, tokens: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False)
        self.tokens = tokens

    def tokens_per_s(self) -> float:
        start = time.perf_counter()
        out = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=self.tokens,
            temperature=0.0)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--run", type=Path, help="a finished LoRA run folder")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from engine.cli import quiet_libraries
    from engine.export import export_run

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    run_dir = args.run or train_default_run(work)
    merged = ChatServer(run_dir, True, args.tokens)
    dtype = merged.ready["dtype"] or "float32"
    sides: dict[str, Any] = {"chat": merged,
                             "chat --no-merge": ChatServer(run_dir, False, args.tokens)}
    export_run(run_dir, work / "merged", merge=True, dtype=dtype)
    sides["plain generate"] = PlainGenerate(work / "merged", dtype, args.tokens)
    try:
        import llama_cpp  # noqa: F401

        export_run(run_dir, work / "gguf", gguf=True, gguf_type="f16")
        sides["llama.cpp f16"] = LlamaCpp(next((work / "gguf").glob("*.gguf")), args.tokens)
    except ImportError:
        print("llama.cpp: llama_cpp is not installed (pip install llama-cpp-python): skipped")
    for side in sides.values():  # warm-up: first calls pay for lazy initialisation
        side.tokens_per_s()
    measured: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.runs):
        for name, side in sides.items():
            measured[name].append(side.tokens_per_s())
    for side in sides.values():
        if isinstance(side, ChatServer):
            side.close()
    medians = {name: statistics.median(v) for name, v in measured.items()}
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": dtype, "new_tokens": args.tokens, "runs": args.runs,
              "tokens_per_s": measured, "median": medians,
              "chat_vs_plain": medians["chat"] / medians["plain generate"]}
    for name, value in medians.items():
        print(f"{name:>16}: {value:6.1f} tokens/s (median of {args.runs}: "
              f"{', '.join(f'{v:.1f}' for v in measured[name])})")
    print(f"chat / plain generate: {result['chat_vs_plain']:.2f}x (goal >= 1.0), dtype {dtype}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
