"""The architecture map: a model's module tree with what a fine-tuning method trains or adds.

``python -m engine explain --model SRC --method M [--json]`` and :func:`explain` (the GUI's
call) build the model from its config alone, on the meta device, apply the method with the
same code training uses, and report every module with its parameters:

- ``params``: parameters the module holds (a weight shared with an earlier module, such as a
  head tied to the embeddings, is counted once, at its first owner; ``shared_with`` names it);
- ``trainable_params``: those the method trains;
- ``added``: the module was added by the method (a LoRA branch, an adapter, a prefix encoder).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.errors import UserError


def _tree(module: Any, name: str, base_ids: set[int], seen: dict[int, str]) -> dict[str, Any]:
    params = trainable = added = 0
    shared_with = None
    for pname, p in module.named_parameters(recurse=False):
        full = f"{name}.{pname}" if name else pname
        if id(p) in seen:
            shared_with = seen[id(p)].rsplit(".", 1)[0]
            continue
        seen[id(p)] = full
        params += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        added += p.numel() if id(p) not in base_ids else 0
    children = [_tree(child, f"{name}.{cname}" if name else cname, base_ids, seen)
                for cname, child in module.named_children()]
    params += sum(c["params"] for c in children)
    added += sum(c["added_params"] for c in children)
    node: dict[str, Any] = {
        "name": name, "type": module.__class__.__name__, "params": params,
        "trainable_params": trainable + sum(c["trainable_params"] for c in children),
        "added_params": added,
        # new, and holding nothing of the base (a LoRA-wrapped q_proj is not "added")
        "added": id(module) not in base_ids and added == params, "children": children}
    if shared_with:
        node["shared_with"] = shared_with
    return node


def _display_root(model: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """The transformers model under a peft wrapper, and the wrapper's own added modules."""
    get_base = getattr(model, "get_base_model", None)
    if get_base is None:
        return model, []
    base = get_base()
    extras = [(n, m) for n, m in model.named_children()
              if n not in ("base_model", "word_embeddings")]
    return base, extras


def explain(model_source: Any, method: str, method_cfg: Any = None, *,
            task: str | None = None) -> dict[str, Any]:
    """The architecture map as plain data (see the module docstring for the node fields)."""
    from engine.method_facts import (
        apply_on_meta,
        build_meta_model,
        method_config,
        natural_task,
        resolve_config,
    )
    from engine.methods import get_method

    spec = get_method(method)
    config = resolve_config(model_source)
    task = task or natural_task(config)
    base = build_meta_model(config, task)
    base_ids = {id(m) for m in base.modules()} | {id(p) for p in base.parameters()}
    total_base = sum(p.numel() for p in base.parameters())
    model = apply_on_meta(base, method, method_config(method, method_cfg), task)
    root, extras = _display_root(model)
    seen: dict[int, str] = {}
    tree = _tree(root, "", base_ids, seen)
    tree["name"] = "model"
    for name, module in extras:  # e.g. the prompt encoder of prefix / prompt tuning
        child = _tree(module, name, base_ids, seen)
        tree["children"].append(child)
        tree["params"] += child["params"]
        tree["trainable_params"] += child["trainable_params"]
    total, trainable = tree["params"], tree["trainable_params"]
    return {
        "model": str(model_source) if isinstance(model_source, str) else config.model_type,
        "model_type": config.model_type, "task": task, "method": method,
        "label": spec.label, "summary": spec.summary, "mergeable": spec.mergeable,
        "totals": {"params": total, "base_params": total_base, "added_params": total - total_base,
                   "trainable_params": trainable,
                   "trainable_share": trainable / total if total else 0.0},
        "tree": tree}


# --------------------------------------------------------------------------- text form


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _simplified(node: dict[str, Any], root: bool = True) -> dict[str, Any]:
    """For reading: no parameter-less modules, and a lone child folded into its parent
    (``lora_A.default``)."""
    children = [_simplified(c, False) for c in node["children"]
                if c["params"] or c.get("shared_with")]
    node = {**node, "children": children}
    own = node["params"] - sum(c["params"] for c in children)
    if len(children) == 1 and not own and not root:
        child = children[0]
        return {**child, "name": node["name"] + "." + child["name"].rsplit(".", 1)[-1]}
    return node


def _label(node: dict[str, Any], parent: str) -> str:
    return node["name"][len(parent) + 1:] if parent else node["name"]


def _signature(node: dict[str, Any]) -> Any:
    return (node["type"], node["params"], node["trainable_params"], node["added"],
            tuple(_signature(c) for c in node["children"]))


def _mark(node: dict[str, Any]) -> str:
    if node["added"] and node["params"]:
        return "+"  # added by the method
    if node["trainable_params"] == node["params"] and node["params"]:
        return "*"  # trained in full
    if node["trainable_params"]:
        return "~"  # partly trained (it holds something trained)
    return " "


def _lines(node: dict[str, Any], prefix: str, last: bool, depth: int, max_depth: int,
           all_layers: bool, out: list[str], parent: str = "") -> None:
    branch = "" if depth == 0 else ("└─ " if last else "├─ ")
    label = _label(node, parent)
    trained = f"  trains {human(node['trainable_params'])}" if node["trainable_params"] else ""
    shared = f"  (shares {node['shared_with']})" if node.get("shared_with") else ""
    out.append(f"{_mark(node)} {prefix}{branch}{label} · {node['type']}  "
               f"{human(node['params'])}{trained}{shared}")
    if depth >= max_depth:
        return
    child_prefix = prefix + ("" if depth == 0 else ("   " if last else "│  "))
    children = node["children"]
    i = 0
    while i < len(children):
        child = children[i]
        j = i + 1
        if not all_layers and _label(child, node["name"]).isdigit():
            # fold runs of identical layers: "1..29: 29 more like 0"
            while j < len(children) and _signature(children[j]) == _signature(child):
                j += 1
        is_last = j >= len(children)
        _lines(child, child_prefix, is_last and j == i + 1, depth + 1, max_depth, all_layers,
               out, node["name"] if depth else "")
        if j > i + 1:
            first = _label(child, node["name"] if depth else "")
            final = _label(children[j - 1], node["name"] if depth else "")
            out.append(f"  {child_prefix}{'└─ ' if is_last else '├─ '}"
                       f"{int(first) + 1}..{final}: {j - i - 1} more like {first}")
        i = j


def render(report: dict[str, Any], *, max_depth: int = 8, all_layers: bool = False) -> str:
    t = report["totals"]
    head = [f"{report['model']} ({report['model_type']}, task {report['task']}) · method "
            f"{report['method']}: {report['label']}",
            f"trainable {t['trainable_params']:,} of {t['params']:,} parameters "
            f"({100 * t['trainable_share']:.4g}%); added by the method: {t['added_params']:,}; "
            f"{'mergeable' if report['mergeable'] else 'cannot be merged into the base'}",
            report["summary"],
            "marks: + added by the method, * trained, ~ holds trained parts", ""]
    out: list[str] = []
    _lines(_simplified(report["tree"]), "", True, 0, max_depth, all_layers, out)
    return "\n".join(head + out)


# --------------------------------------------------------------------------- CLI verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="default name, folder, catalog name or "
                        "hub id (only the config is read)")
    from engine.methods import METHODS

    parser.add_argument("--method", default="lora", help=", ".join(METHODS))
    parser.add_argument("--task", choices=("sft", "classify"), default=None,
                        help="default: classify for encoders (BERT), else sft")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. --set r=8 --set target_modules=q_proj,v_proj")
    parser.add_argument("--depth", type=int, default=8, help="deepest level printed")
    parser.add_argument("--all-layers", action="store_true", help="print every layer in full")
    parser.add_argument("--json", action="store_true", help="print the map as JSON")


def _options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair!r} is not KEY=VALUE", "e.g. --set r=8")
        parsed = yaml.safe_load(value)
        if key == "target_modules" and isinstance(parsed, str):
            parsed = parsed.split(",")
        out[key.strip()] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries

    quiet_libraries()
    report = explain(args.model, args.method, _options(args.set), task=args.task)
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(render(report, max_depth=args.depth, all_layers=args.all_layers))
    return 0
