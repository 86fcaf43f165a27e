"""The baseline: LoRA fine-tuning written as a user would, with transformers' Trainer and peft.

    python benchmarks/plain_script.py --data resources/datasets/pirate-persona.jsonl \
        --steps 10 --precision bf16 [--model FOLDER] [--out steps.jsonl]

Tokenize each conversation with the chat template (loss on the answer only: the prompt's tokens
get label -100), pad each batch to its longest row, no packing; LoRA r16 on all linear layers;
the Trainer's AdamW, linear schedule, 10% warm-up. ``--precision bf16`` is the Trainer's bf16
autocast on the CPU (``bf16=True``), fp32 otherwise.

The only additions for measuring are a callback that writes one JSON line per optimizer step
(wall time, loss, real tokens seen so far, via the Trainer's own
``include_num_input_tokens_seen="non_padding"``) and ``--order``, which lets the benchmark hand
both tools the same rows in the same order. Nothing from Tunesmith is imported, except (when
``--model`` is not given) the one line that finds the local folder of the default model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

STARTED = time.time()  # before the heavy imports: the benchmark times from the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a JSONL file of {'messages': [...]}")
    parser.add_argument("--model", default="", help="a local model folder (default: "
                        "Tunesmith's offline SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--order", default="", help="comma-separated row indices to train on, "
                        "in this order (default: every row, file order)")
    parser.add_argument("--out", default="", help="write the step lines here (default stdout)")
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(args.seed)
    model_dir = args.model
    if not model_dir:
        from engine.models import load_model_dir  # only to find the offline default's folder

        model_dir = load_model_dir("smollm2-135m-instruct")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with open(args.data, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if args.order:
        rows = [rows[int(i)] for i in args.order.split(",")]

    def tokenize(messages: list[dict[str, str]]) -> dict[str, list[int]]:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages, tokenize=True,
                                             return_dict=True)["input_ids"]
        full = list(full)[: args.max_length]
        labels = [-100] * len(prompt) + full[len(prompt):]
        return {"input_ids": full, "attention_mask": [1] * len(full),
                "labels": labels[: len(full)]}

    train = [tokenize(r["messages"]) for r in rows]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear",
                                             task_type="CAUSAL_LM"))

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115

    class StepLines(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                out.write(json.dumps({"t": time.time(), "started": STARTED,
                                      "step": state.global_step, "loss": logs["loss"],
                                      "tokens_seen": state.num_input_tokens_seen}) + "\n")
                out.flush()

    training_args = TrainingArguments(
        output_dir="/tmp/plain-script-out", max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        lr_scheduler_type="linear", warmup_steps=math.ceil(0.1 * args.steps),
        logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
        data_seed=args.seed, bf16=args.precision == "bf16", use_cpu=True,
        disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"),
                      callbacks=[StepLines()])
    trainer.train()
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
