"""Facts for a provenance record read from a ComfyUI API-format prompt graph (the hidden PROMPT input).

``{node_id: {"class_type": ..., "inputs": {name: value or [source_node_id, output_index]}}}``

* models: every ``ckpt_name`` / ``unet_name`` / ``vae_name`` / ``clip_name*`` / ``control_net_name``
  value, with the ComfyUI model folder it names;
* LoRAs: every ``lora_name`` (with ``strength_model`` when present);
* seeds: ``seed`` / ``noise_seed`` of sampler nodes, following links to primitive nodes;
* prompts: the text reached from a sampler's ``positive`` / ``negative`` inputs, following
  conditioning links (combine, concat, set-area...) up to a few hops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_INPUTS = {
    "ckpt_name": "checkpoints",
    "unet_name": "diffusion_models",
    "vae_name": "vae",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "control_net_name": "controlnet",
}
SEED_INPUTS = ("seed", "noise_seed")
TEXT_INPUTS = ("text", "text_g", "text_l", "prompt", "string", "value")
MAX_HOPS = 8


@dataclass
class WorkflowFacts:
    models: dict[str, str] = field(default_factory=dict)  # file name -> ComfyUI folder kind
    loras: dict[str, float | None] = field(default_factory=dict)  # file name -> model strength
    seeds: list[int] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


def workflow_facts(prompt: Any, skip_class_prefix: str = "Backdrop") -> WorkflowFacts:
    """Collect models, LoRAs, seeds and prompt texts; nodes whose class starts with ``skip_class_prefix``
    (this pack's own nodes) are not searched for seeds. Anything malformed is ignored."""
    facts = WorkflowFacts()
    if not isinstance(prompt, dict):
        return facts
    for node_id in sorted(prompt, key=_node_order):
        node = prompt[node_id]
        if not isinstance(node, dict):
            continue
        inputs = _inputs(node)
        for name, value in inputs.items():
            if name in MODEL_INPUTS and isinstance(value, str):
                facts.models.setdefault(value, MODEL_INPUTS[name])
            elif name == "lora_name" and isinstance(value, str):
                strength = inputs.get("strength_model")
                facts.loras[value] = float(strength) if isinstance(strength, (int, float)) else None
        if str(node.get("class_type", "")).startswith(skip_class_prefix):
            continue
        for name in SEED_INPUTS:
            seed = _resolve(prompt, inputs.get(name), (*SEED_INPUTS, "value"), int)
            if seed is not None and seed not in facts.seeds:
                facts.seeds.append(seed)
        for name, texts in (("positive", facts.positive), ("negative", facts.negative)):
            if _is_link(inputs.get(name)):
                for text in _texts_upstream(prompt, inputs[name], MAX_HOPS):
                    if text not in texts:
                        texts.append(text)
    return facts


def _texts_upstream(prompt: dict, link: list, hops: int) -> list[str]:
    node = prompt.get(str(link[0]))
    inputs = _inputs(node)
    found = [t for name in TEXT_INPUTS if (t := _resolve(prompt, inputs.get(name), TEXT_INPUTS, str))]
    if found or hops <= 0:
        return found
    texts: list[str] = []
    for value in inputs.values():
        if _is_link(value):
            texts.extend(_texts_upstream(prompt, value, hops - 1))
    return texts


def _resolve(prompt: dict, value: Any, names: tuple[str, ...], kind: type, hops: int = MAX_HOPS):
    """A literal of ``kind``, or the first such literal on the linked node (following links)."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if hops <= 0 or not _is_link(value):
        return None
    inputs = _inputs(prompt.get(str(value[0])))
    for name in names:
        if name in inputs:
            found = _resolve(prompt, inputs[name], names, kind, hops - 1)
            if found is not None:
                return found
    return None


def _inputs(node: Any) -> dict:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))


def _node_order(node_id: str):
    return (0, int(node_id)) if str(node_id).isdigit() else (1, str(node_id))
