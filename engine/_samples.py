"""The prompts a model answers to show how it changes: while it trains (at each evaluation)
and in Evaluate. One rule for both: ``training.sample_prompts`` when set, else the first
held-out questions of the run's own data."""

from __future__ import annotations

from typing import Any

MAX_PROMPTS_FROM_DATA = 3


def sample_prompts_for(job: Any, data: Any) -> list[str]:
    """The prompts answered to show the model change, in training and in Evaluate alike:
    ``training.sample_prompts`` when set, else the first held-out questions."""
    return list(job.training.sample_prompts or held_out_prompts(data))


def held_out_prompts(data: Any) -> list[str]:
    """The first user turns of held-out conversations (or prompts of prompt/completion rows)."""
    out = []
    for sample in data.eval_samples:
        if sample.messages:
            users = [m["content"] for m in sample.messages if m.get("role") == "user"]
            if users:
                out.append(users[0])
        elif sample.prompt:
            out.append(sample.prompt)
        if len(out) == MAX_PROMPTS_FROM_DATA:
            break
    return out
