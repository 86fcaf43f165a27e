"""The event an export reports when a result is written (register it in engine.events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.events import EVENT_TYPES, _now


@dataclass(frozen=True, kw_only=True)
class Exported:
    """One finished export: an adapter folder, a merged model folder, or a GGUF file.

    ``max_logit_diff`` is the largest absolute logit difference found by the export's check
    (merged vs base+adapter in fp32, or GGUF vs merged), ``None`` where nothing was compared.
    """

    type: str = "exported"
    time: float = field(default_factory=_now)
    path: str = ""
    kind: str = "adapter"  # adapter | merged | gguf
    max_logit_diff: float | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# Until engine.events lists it, readers that imported engine.export rebuild it with from_json.
EVENT_TYPES.setdefault(Exported.type, Exported)
