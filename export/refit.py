"""Map ONNX initializers back to torch UNet weights, so new weights (a LoRA) can be refit by name.

The TorchScript exporter keeps parameter names for most weights but folds some: a Linear weight
becomes a transposed ``onnx::MatMul_N`` initializer, a GroupNorm weight a ``[C,1,1]`` one, and equal
tensors are de-duplicated behind ``Identity`` nodes. ``build_refit_map`` recovers every mapping from
the graph's structure (the consumer node's scope names the module) and confirms it by value, so it
never guesses from values alone. ``refit_weights`` turns torch weights into ``{initializer: array}``,
ready for onnxruntime's ``add_initializer``, an ONNX rewrite, or TensorRT's Refitter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.errors import InvalidModelError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

WRAPPER_PREFIX = "unet."  # the export wrapper holds the UNet as ``self.unet``
_DTYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT / FLOAT16
_LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


@dataclass(frozen=True)
class RefitEntry:
    """One ONNX initializer and the torch weights it holds (several when the exporter de-duplicated them)."""

    initializer: str
    params: tuple[str, ...]
    transpose: bool
    shape: tuple[int, ...]
    dtype: str = "float32"
    foreign_uses: int = 0  # consumers that use it as a constant, not as these weights

    def to_dict(self) -> dict[str, Any]:
        return {"params": list(self.params), "transpose": self.transpose, "shape": list(self.shape),
                "dtype": self.dtype, "foreign_uses": self.foreign_uses}


RefitMap = dict[str, RefitEntry]


def refit_map_to_dict(refit_map: RefitMap) -> dict[str, Any]:
    return {name: entry.to_dict() for name, entry in refit_map.items()}


def refit_map_from_dict(data: dict[str, Any]) -> RefitMap:
    return {name: RefitEntry(initializer=name, params=tuple(e["params"]), transpose=bool(e["transpose"]),
                             shape=tuple(int(d) for d in e["shape"]), dtype=str(e.get("dtype", "float32")),
                             foreign_uses=int(e.get("foreign_uses", 0)))
            for name, e in data.items()}


def plain_name(name: str) -> str:
    """A peft-wrapped parameter name as the plain UNet has it (``to_q.base_layer.weight`` -> ``to_q.weight``)."""
    return name.replace(".base_layer.", ".")


def base_parameters(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's weights by plain name, without LoRA adapter tensors."""
    return {plain_name(n): p for n, p in unet.named_parameters() if not any(part in n for part in _LORA_PARTS)}


def build_refit_map(model: onnx.ModelProto, unet: Any, base_dir: str | Path | None = None,
                    prefix: str = WRAPPER_PREFIX) -> RefitMap:
    """Which torch weights each float initializer of ``model`` (exported from ``unet``) holds."""
    params = base_parameters(unet)
    consumers = _consumers(model)
    refit_map: RefitMap = {}
    for init in model.graph.initializer:
        if init.data_type not in _DTYPES:
            continue
        direct = plain_name(init.name[len(prefix):]) if init.name.startswith(prefix) else None
        uses = list(_real_consumers(init.name, consumers))
        value = None
        matched: dict[str, bool] = {}
        foreign = 0
        if direct in params:
            matched[direct] = False
        for node in uses:
            found = False
            for candidate in _module_params(node.name, params, prefix):
                if candidate in matched:
                    found = True
                    continue
                if value is None:
                    value = _to_array(init, base_dir)
                transpose = _equal_as(value, params[candidate])
                if transpose is not None:
                    matched[candidate] = transpose
                    found = True
            if not found and direct is None:
                foreign += 1
        if not matched:
            continue
        transposes = set(matched.values())
        if len(transposes) != 1:
            raise InvalidModelError(f"initializer {init.name} holds weights in two layouts: {sorted(matched)}")
        refit_map[init.name] = RefitEntry(initializer=init.name, params=tuple(sorted(matched)),
                                          transpose=transposes.pop(), shape=tuple(init.dims),
                                          dtype=_DTYPES[init.data_type], foreign_uses=foreign)
    return refit_map


def with_dtypes(refit_map: RefitMap, model: onnx.ModelProto) -> RefitMap:
    """The map with each entry's dtype read from ``model`` (after an fp16 conversion kept the names)."""
    import dataclasses

    types = {init.name: _DTYPES.get(init.data_type) for init in model.graph.initializer}
    return {name: dataclasses.replace(entry, dtype=types[name]) for name, entry in refit_map.items()
            if types.get(name)}


def refit_weights(refit_map: RefitMap, weights: dict[str, torch.Tensor],
                  optional: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """``{initializer: array}`` for the initializers that hold the torch weights in ``weights`` (plain names).

    Weights named in ``optional`` may be left out when they cannot be refit on their own (the export
    did not use them, or they share an initializer); every other weight must map to an initializer it
    alone decides. An initializer that the exporter de-duplicated (several equal weights) takes a new
    value only if all of them get the same one; one that is also a graph constant cannot change.
    """
    import numpy as np

    optional = set(optional)
    by_param: dict[str, RefitEntry] = {}
    for entry in refit_map.values():
        for param in entry.params:
            by_param[param] = entry
    unknown = sorted(set(weights) - set(by_param) - optional)
    if unknown:
        listed = ", ".join(unknown[:6]) + (" ..." if len(unknown) > 6 else "")
        raise InvalidModelError(f"{len(unknown)} weights have no initializer in the exported model: {listed}")
    out: dict[str, np.ndarray] = {}
    entries = {by_param[p].initializer: by_param[p] for p in weights if p in by_param}
    for entry in entries.values():
        given = [p for p in entry.params if p in weights]
        values = [weights[p].detach().float().cpu() for p in given]
        consistent = len(given) == len(entry.params) and all(torch_equal(values[0], v) for v in values[1:])
        if entry.foreign_uses or not consistent:
            if set(given) <= optional:
                continue
            raise InvalidModelError(
                f"initializer {entry.initializer} holds {', '.join(entry.params)}"
                f"{' and is also a graph constant' if entry.foreign_uses else ''} (the exporter merged equal "
                "tensors), so it cannot take these new values by itself. Export with this LoRA fused instead.")
        array = (values[0].T if entry.transpose else values[0]).reshape(entry.shape).numpy()
        out[entry.initializer] = np.ascontiguousarray(array.astype(entry.dtype))
    return out


def torch_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def effective_lora_weights(unet: Any) -> dict[str, torch.Tensor]:
    """Weight (and bias) of every peft-wrapped layer as its forward pass uses it right now.

    Active, enabled adapters count with their current scaling (``set_adapters`` strengths); disabled
    adapters leave the base weight. Layers without adapters are not listed.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in _lora_layers(unet):
        base = module.get_base_layer()
        weight = base.weight.detach()
        pending = [] if module.disable_adapters else [
            a for a in module.active_adapters if a not in module.merged_adapters and a in module.lora_A]
        if module.merged and module.disable_adapters:
            for adapter in module.merged_adapters:
                weight = weight - module.get_delta_weight(adapter)
        for adapter in pending:
            weight = weight + module.get_delta_weight(adapter)
        out[f"{plain_name(name)}.weight"] = weight
        if getattr(base, "bias", None) is not None:
            out[f"{plain_name(name)}.bias"] = base.bias.detach()
    return out


def _lora_layers(unet: Any) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _real_consumers(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> Iterable[onnx.NodeProto]:
    """Consumers of ``name``, looking through the exporter's de-duplication ``Identity`` nodes."""
    for node in consumers.get(name, []):
        if node.op_type == "Identity":
            yield from _real_consumers(node.output[0], consumers)
        else:
            yield node


def _module_params(node_name: str, params: dict[str, Any], prefix: str) -> list[str]:
    """Weights of the module a node belongs to: ``/unet/a/b.0/to_q/MatMul`` -> ``a.b.0.to_q.*``."""
    scope = node_name.strip("/").split("/")[:-1]
    wrapper = prefix.rstrip(".")
    if scope and scope[0] == wrapper:
        scope = scope[1:]
    module = plain_name(".".join(scope) + ".").rstrip(".")
    if not module:
        return []
    return [f"{module}.{leaf}" for leaf in ("weight", "bias") if f"{module}.{leaf}" in params]


def _to_array(init: onnx.TensorProto, base_dir: str | Path | None) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init, base_dir=str(base_dir) if base_dir else "")


def _equal_as(value: np.ndarray, param: torch.Tensor) -> bool | None:
    """False if ``value`` is ``param`` (reshaped), True if it is ``param`` transposed, None otherwise."""
    import numpy as np

    p = param.detach().float().cpu().numpy()
    v = value.astype(np.float32)
    if v.size != p.size:
        return None
    if np.array_equal(v.reshape(p.shape), p):
        return False
    if p.ndim == 2 and v.shape == p.T.shape and np.array_equal(v, p.T):
        return True
    return None
