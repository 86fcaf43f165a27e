"""Bottleneck adapters (Houlsby et al., 2019): the one method of the lesson peft lacks.

Each transformer layer gets two small modules, one on the output of its attention block and
one on the output of its feed-forward block, *before* the residual addition::

    h = sublayer(x)                         # o_proj / down_proj (BERT: the *.output.dense)
    h = h + up(act(down(h)))                # the adapter, with its own residual
    y = x + h                               # the layer's own residual, unchanged

``up`` starts at zero, so an adapted model computes exactly what the base computes until the
first optimizer step. The base stays frozen; only the adapters (and, for classification, the
new classifier head) train. Adapters add layers in series, so they cannot be merged into the
base weights: the result is always the base plus ``adapter_model.safetensors``.

The adapters hang on the layer that owns the sublayer (``layers.3.attn_adapter``) and a
forward hook on the sublayer's output projection adds them in, so the base's weight names
and its 4-bit or 16-bit layers are left as they are.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KIND = "tunesmith-bottleneck-adapter"

# (adapter name, output projections of that sublayer, relative to the layer module)
SITES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn_adapter", ("self_attn.o_proj", "attention.output.dense", "self_attention.dense",
                      "attn.c_proj", "attn.out_proj", "self_attn.out_proj")),
    ("mlp_adapter", ("mlp.down_proj", "output.dense", "mlp.c_proj", "mlp.fc2",
                     "mlp.dense_4h_to_h", "fc2")),
)
# Classifier heads of sequence-classification models: new, so they train with the adapters.
HEADS = ("score", "classifier")


@functools.cache
def bottleneck_class() -> type:
    """The adapter module class (built on first use: importing this module needs no torch)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """down-projection → GELU → up-projection, added to its input (up starts at zero)."""

        def __init__(self, hidden: int, bottleneck: int) -> None:
            super().__init__()
            self.down = nn.Linear(hidden, bottleneck)
            self.act = nn.GELU()
            self.up = nn.Linear(bottleneck, hidden)
            nn.init.normal_(self.down.weight, std=1e-2)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            # Adapters stay fp32 whatever the base's dtype: tiny, and stable to train.
            x = h.to(self.down.weight.dtype)
            return h + self.up(self.act(self.down(x))).to(h.dtype)

    return Bottleneck


def _layers(model: Any) -> list[Any]:
    """The transformer layers: the longest ModuleList whose items hold an adaptable site."""
    from torch import nn

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            first = module[0] if len(module) else None
            if first is not None and all(_site(first, paths) for _n, paths in SITES):
                best = list(module)
    return best


def _site(layer: Any, paths: tuple[str, ...]) -> Any:
    for path in paths:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    return None


def _out_features(module: Any) -> int:
    n = getattr(module, "out_features", None) or getattr(module, "nf", None)
    if n is None:
        raise ValueError(f"cannot tell the width of {module.__class__.__name__}")
    return int(n)


def _hook(adapter: Any) -> Any:
    def add_adapter(_module: Any, _inputs: Any, output: Any) -> Any:
        return adapter(output)

    return add_adapter


def attach(model: Any, bottleneck_size: int) -> Any:
    """Freeze ``model`` and add adapters after every attention and feed-forward block."""
    from torch import nn

    from engine.errors import ConfigError

    layers = _layers(model)
    if not layers:
        raise ConfigError("method.name", f"adapter: cannot find the attention and feed-forward "
                          f"blocks of {model.__class__.__name__}",
                          "use lora, which works on any linear layer")
    for p in model.parameters():
        p.requires_grad = False
    device = next(model.parameters()).device
    for layer in layers:
        for name, paths in SITES:
            site = _site(layer, paths)
            assert site is not None  # _layers checked every site
            adapter = bottleneck_class()(_out_features(site), bottleneck_size)
            if device.type != "meta":
                adapter.to(device)
            layer.add_module(name, adapter)
            site.register_forward_hook(_hook(adapter))
    for head in HEADS:
        module = getattr(model, head, None)
        if isinstance(module, nn.Module):
            for p in module.parameters():
                p.requires_grad = True
    model.tunesmith_adapter = {"kind": KIND, "bottleneck_size": bottleneck_size,
                               "layers": len(layers)}
    return model


def apply(model: Any, cfg: Any, task: str) -> Any:
    return attach(model, cfg.bottleneck_size)


def trained_state(model: Any) -> dict[str, Any]:
    """The adapters' weights (and a classifier head's): what ``save`` writes."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters()
            if p.requires_grad or "_adapter." in n}


def save(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = dict(getattr(model, "tunesmith_adapter", {}))
    info["base_model_class"] = model.__class__.__name__
    info["base_model_name_or_path"] = getattr(model.config, "_name_or_path", "")
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    save_file({n: t.cpu() for n, t in trained_state(model).items()}, str(folder / WEIGHTS_FILE))


def is_adapter_folder(folder: Path) -> bool:
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and json.loads(path.read_text()).get("kind") == KIND


def load_trained(base: Any, folder: Path) -> Any:
    """Re-attach the saved adapters to ``base`` (which is modified and returned)."""
    import torch
    from safetensors.torch import load_file

    from engine.errors import UserError

    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise UserError(f"{folder} holds no bottleneck adapter ({CONFIG_FILE} missing)",
                        "pick the adapter/ folder of a run trained with method adapter",
                        code="bad_model")
    info = json.loads((folder / CONFIG_FILE).read_text())
    model = attach(base, int(info["bottleneck_size"]))
    state = load_file(str(folder / WEIGHTS_FILE), device=str(next(model.parameters()).device))
    missing = set(state) - set(dict(model.named_parameters()))
    if missing:
        raise UserError(f"the adapter in {folder} does not fit this base model "
                        f"(e.g. {sorted(missing)[0]})",
                        "use the base model the adapter was trained on", code="bad_model")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    return model
