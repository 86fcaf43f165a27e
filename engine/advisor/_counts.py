"""Exact parameter counts and architecture facts from a model built on the meta device.

Building a model from its config inside accelerate's ``init_empty_weights`` allocates no
memory, so an 8B model and its peft wrapper are counted in about a second, offline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import UserError
from engine.method_facts import build_meta_model
from engine.methods import METHODS

# Linear layers grouped by the tensor they read, so a shared input is counted once.
_INPUT_GROUPS = {
    "attn_in": ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn"),
    "attn_out": ("o_proj", "out_proj", "dense", "c_proj"),
    "mlp_in": ("gate_proj", "up_proj", "gate_up_proj", "fc1", "w1", "w3", "c_fc"),
    "mlp_out": ("down_proj", "fc2", "w2"),
}


@dataclass(frozen=True)
class LinearFacts:
    """One linear layer inside a decoder layer."""

    name: str
    in_features: int
    out_features: int
    group: str


@dataclass(frozen=True)
class ModelFacts:
    """Architecture numbers the memory model needs, read from a meta-device model."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    total_params: int
    layer_linear_params: int  # all decoder-layer linear weights (4-bit under QLoRA)
    other_params: int  # embeddings, norms, head, biases: kept 16-bit under QLoRA
    norms_per_layer: int
    tied_embeddings: bool
    linears: tuple[LinearFacts, ...] = field(default_factory=tuple)  # of one decoder layer
    param_sizes: tuple[int, ...] = ()  # numel of every parameter tensor

    @property
    def largest_linear(self) -> int:
        """Elements of the largest decoder-layer weight (a dequantization transient)."""
        return max((lf.in_features * lf.out_features for lf in self.linears), default=0)


@dataclass(frozen=True)
class MethodCounts:
    """Trainable and total parameters once a method is applied, plus the trainable tensors."""

    trainable: int
    total: int
    tensor_sizes: tuple[int, ...] = ()  # numel of each trainable tensor (for 8-bit Adam)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def _group(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    for group, leaves in _INPUT_GROUPS.items():
        if leaf in leaves:
            return group
    return f"own:{leaf}"


def config_key(config: Any) -> str:
    """A hashable, stable text form of a config (cache key)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def _decoder_layers(model: Any) -> Any:
    for module in model.modules():
        if module.__class__.__name__.endswith("DecoderLayer"):
            return module
    raise UserError(f"no decoder layers found in {model.__class__.__name__}",
                    "the advisor supports decoder-only language models")


def _layer_linears(layer: Any) -> tuple[LinearFacts, ...]:
    import torch

    return tuple(
        LinearFacts(name, m.in_features, m.out_features, _group(name))
        for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear))


def _unique_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _facts_from_model(config: Any, model: Any) -> ModelFacts:
    layer = _decoder_layers(model)
    linears = _layer_linears(layer)
    layers = int(config.num_hidden_layers)
    linear_weights = layers * sum(lf.in_features * lf.out_features for lf in linears)
    total = _unique_params(model)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    norms = sum(1 for _n, m in layer.named_modules() if "Norm" in m.__class__.__name__)
    return ModelFacts(
        model_type=config.model_type, hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size), layers=layers, heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=head_dim,
        vocab=int(config.vocab_size), total_params=total, layer_linear_params=linear_weights,
        other_params=total - linear_weights, norms_per_layer=norms,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), linears=linears,
        param_sizes=tuple(p.numel() for p in model.parameters()))


_FACTS: dict[str, ModelFacts] = {}
_COUNTS: dict[tuple[str, str, str], MethodCounts] = {}


def model_facts(config: Any) -> ModelFacts:
    """Architecture facts of ``config`` (cached per config)."""
    key = config_key(config)
    if key not in _FACTS:
        _FACTS[key] = _facts_from_model(config, build_meta_model(config, "sft"))
    return _FACTS[key]


@dataclass(frozen=True)
class MethodOptions:
    """The method settings that change what is trained (defaults: the job file's)."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    bottleneck_size: int = 64
    num_virtual_tokens: int = 20
    prefix_projection: bool = False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> MethodOptions:
        """Options from keyword arguments; unknown names raise a UserError naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UserError(f"unknown method option(s): {', '.join(unknown)}",
                            f"known: {', '.join(sorted(known))}")
        if "target_modules" in kwargs:
            tm = kwargs["target_modules"]
            kwargs["target_modules"] = (tm,) if isinstance(tm, str) else tuple(tm)
        return cls(**kwargs)


def _method_config(method: str, opts: MethodOptions) -> Any:
    from engine.method_facts import method_config

    return method_config(method, {**asdict(opts), "target_modules": list(opts.target_modules)})


def peft_config(method: str, config: Any, opts: MethodOptions) -> Any:
    """The peft config the method's spec builds (None for full fine-tuning and adapters)."""
    from engine.methods import get_method

    build = get_method(method).peft_config
    return None if build is None else build(_method_config(method, opts), "sft", config)


def method_counts(config: Any, method: str, opts: MethodOptions | None = None) -> MethodCounts:
    """Exact trainable / total parameters of ``method`` on the model of ``config``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}", f"one of: {', '.join(METHODS)}")
    opts = opts or MethodOptions()
    # A 4-bit base trains exactly the parameters of its 16-bit twin (QLoRA: LoRA's).
    key = (config_key(config), "lora" if method == "qlora" else method, repr(opts))
    if key not in _COUNTS:
        _COUNTS[key] = _count(config, method, opts)
    return _COUNTS[key]


def _count(config: Any, method: str, opts: MethodOptions) -> MethodCounts:
    """The method applied by its own spec to a meta-device model, as a training run does."""
    from engine.method_facts import apply_on_meta
    from engine.methods import count_parameters

    model = apply_on_meta(build_meta_model(config, "sft"), method, _method_config(method, opts),
                          "sft")
    trainable, total = count_parameters(model)
    sizes = tuple(p.numel() for p in model.parameters() if p.requires_grad)
    return MethodCounts(trainable, total, sizes)


@dataclass(frozen=True)
class ResolvedModel:
    """A model source resolved to its config, with the catalog's display facts if known."""

    key: str  # the catalog name, or the source as given
    config: Any
    info: dict[str, Any]


def resolve_model(source: str) -> ResolvedModel:
    """Catalog entry (by name or hub id) first, else ``engine.models.load_config``."""
    from engine import catalog

    if not source or not source.strip():
        raise UserError("no model given", "pass --model NAME (see the catalog names)")
    entry = catalog.get(source)
    if entry is not None:
        info = {k: entry[k] for k in ("name", "display_name", "hub_id", "params",
                                      "context_length", "license")}
        return ResolvedModel(entry["name"], catalog.catalog_config(entry["name"]),
                             {**info, "from": "catalog"})
    try:
        from engine.models import load_config
    except ImportError:  # pragma: no cover - engine.models ships with the engine
        load_config = None
    if load_config is None:
        raise UserError(f"unknown model {source!r}", f"catalog models: {_known()}")
    try:
        config = load_config(source)
    except UserError as exc:
        raise UserError(f"unknown model {source!r}: {exc.message}",
                        f"use a catalog name ({_known()}), a local model folder or a hub id",
                        code="bad_model") from None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ResolvedModel(source.strip(), config, {"name": source.strip(), "from": "config"})


def _known() -> str:
    from engine import catalog

    return ", ".join(catalog.names())


def lora_counts_analytic(facts: ModelFacts, opts: MethodOptions) -> MethodCounts:
    """LoRA's counts without peft: r x (in + out) per wrapped linear (equal to peft's).

    Used where many models are scanned (what would fit) and a second each adds up.
    """
    wrap_all = "all-linear" in opts.target_modules
    targets = [lf for lf in facts.linears
               if wrap_all or lf.name.rsplit(".", 1)[-1] in opts.target_modules]
    sizes = tuple(n for lf in targets for n in (opts.r * lf.in_features,
                                                 opts.r * lf.out_features)) * facts.layers
    return MethodCounts(sum(sizes), facts.total_params + sum(sizes), sizes)
