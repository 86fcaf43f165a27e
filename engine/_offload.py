"""Activation offloading: tensors saved for backward wait in CPU memory, not on the GPU.

As torchtune's ``OffloadActivations``: inside the context, every tensor autograd saves for the
backward pass (on a CUDA device, not a parameter, at least ``min_bytes``) is copied to pinned
CPU memory when it is saved and copied back when the backward pass needs it. With gradient
checkpointing what is saved is each layer's input (non-reentrant checkpointing saves it
outside its own hooks), so the GPU holds about one layer's input instead of all of them.
The copies run on the compute stream, so they are ordered with the kernels that free and
reuse the GPU memory: correct without extra synchronisation, at the cost of overlap.

The pack/unpack pair is device-agnostic (``devices``), so its logic is tested on the CPU.
"""

from __future__ import annotations

from typing import Any

MIN_BYTES = 1024  # smaller tensors cost more to move than they save (torchtune's threshold)


class OffloadActivations:
    """A ``saved_tensors_hooks`` context that parks saved activations in CPU memory."""

    def __init__(self, *, devices: tuple[str, ...] = ("cuda",), min_bytes: int = MIN_BYTES,
                 pin_memory: bool = True) -> None:
        import torch

        self.devices = devices
        self.min_bytes = min_bytes
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.offloaded_bytes = 0  # moved since the context was made (tests, telemetry)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: Any) -> Any:
        import torch

        if (t.device.type not in self.devices or isinstance(t, torch.nn.Parameter)
                or t.numel() * t.element_size() < self.min_bytes):
            return t
        cpu = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, device="cpu",
                          pin_memory=self.pin_memory)
        cpu.copy_(t, non_blocking=self.pin_memory)
        self.offloaded_bytes += t.numel() * t.element_size()
        return (cpu, t.device)

    @staticmethod
    def _unpack(packed: Any) -> Any:
        if isinstance(packed, tuple):
            cpu, device = packed
            return cpu.to(device, non_blocking=True)
        return packed

    def __enter__(self) -> OffloadActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def offload_decision(requested: str, device: str, *, needed: bool | None = None) -> tuple[
        bool, str]:
    """(on, why) for ``training.activation_offloading`` on ``device``.

    ``needed`` is the advisor's answer for ``auto`` on CUDA: True when the job fits the GPU
    only with offloading, None when it could not tell.
    """
    if requested == "off":
        return False, "training.activation_offloading: off"
    if device != "cuda":
        return False, (f"activation offloading ignored on {device}: activations already live "
                       "in main memory" if requested == "on" else
                       f"auto: off on {device} (nothing to offload to)")
    if requested == "on":
        return True, "training.activation_offloading: on"
    if needed:
        return True, "auto: the advisor predicts the job fits this GPU only with offloading"
    return False, "auto: the job fits this GPU without offloading (it costs speed)"
