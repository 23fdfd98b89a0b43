"""FLUX transformer engines: an ONNX export in onnxruntime (CPU) or an OpenVINO IR, torch tensors in and out.

Both take the validated inputs of ``flux_feeds`` (runtime/engines/flux_spec.py) and return ``sample``.
Shapes are dynamic (batch, image tokens, text tokens), so there is no shape profile. The onnxruntime
session is the UNet backend's (same CPU session options, corrupt-file errors and initializer overrides
for a LoRA refit), only fed by the FLUX contract; OpenVINO compiles with the same precision rules
(runtime/engines/openvino_backend.py: fp32 pinned to f32, bf16/fp16 only where the CPU has the unit).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, InvalidModelError
from .flux_spec import HIDDEN, OUTPUT, FluxSpec, flux_feeds

if TYPE_CHECKING:
    import torch


class FluxBackend:
    """Common ``run``: validate, compute on the engine, return ``sample`` in the caller's dtype and device."""

    name = "engine"
    spec: FluxSpec
    profile = None

    def run(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
            timestep: torch.Tensor | float, img_ids: torch.Tensor, txt_ids: torch.Tensor,
            guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        import torch

        feeds = flux_feeds(self.spec, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
                           txt_ids, guidance)
        arrays = {name: feeds[name].detach().cpu().contiguous().numpy() for name in self.spec.input_names}
        out = torch.from_numpy(self._compute(arrays))
        return out.to(device=hidden_states.device, dtype=hidden_states.dtype)

    def _compute(self, arrays: dict[str, Any]) -> Any:
        raise NotImplementedError


class OrtFluxBackend(FluxBackend):
    """A FLUX transformer ``.onnx`` in an onnxruntime CPU session."""

    def __init__(self, model_path: str | os.PathLike, spec: FluxSpec, threads: int | None = None,
                 initializer_overrides: dict[str, Any] | None = None) -> None:
        from .ort_backend import OrtUNetBackend

        # the UNet backend owns session creation (options, overrides, corrupt-file errors); only its feeds differ
        self._session = OrtUNetBackend(model_path, spec, provider="cpu", threads=threads,  # type: ignore[arg-type]
                                       initializer_overrides=initializer_overrides)
        self.spec = spec
        self.model_path = Path(model_path)
        self.session = self._session.session
        self.name = "onnxruntime-cpu"
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT if OUTPUT in outputs else outputs[0]

    def _compute(self, arrays: dict[str, Any]) -> Any:
        return self.session.run([self.output_name], arrays)[0]


class OpenVinoFluxBackend(FluxBackend):
    """A FLUX transformer IR compiled by OpenVINO for the CPU in the engine's precision."""

    def __init__(self, model_path: str | os.PathLike, spec: FluxSpec, precision: str = "fp32",
                 threads: int | None = None) -> None:
        from .openvino_backend import OpenVinoModel

        self.model = OpenVinoModel(model_path, precision, threads)
        self.spec = spec
        self.model_path = self.model.model_path
        self.precision = precision
        self.name = f"openvino-{precision}"
        missing = set(spec.input_names) - set(self.model.input_names)
        if missing:
            raise InvalidModelError(f"{self.model_path.name} lacks the FLUX transformer inputs {sorted(missing)}; "
                                    f"it has {self.model.input_names}")
        names = self.model.output_names
        self._output = names.index(OUTPUT) if OUTPUT in names else 0

    def _compute(self, arrays: dict[str, Any]) -> Any:
        return self.model.run(arrays)[self._output]

    def kernels(self) -> dict[str, Any]:
        return self.model.kernels()


class TorchFluxBackend(FluxBackend):
    """The reference: the torch transformer itself (eager), fed the same contract."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self.spec = FluxSpec.from_transformer(transformer)
        self.name = "torch"

    def run(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
            timestep: torch.Tensor | float, img_ids: torch.Tensor, txt_ids: torch.Tensor,
            guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        import torch

        feeds = flux_feeds(self.spec, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
                           txt_ids, guidance)
        dtype = self.transformer.dtype
        with torch.inference_mode():
            out = self.transformer(**{k: v.to(dtype) for k, v in feeds.items()}, return_dict=False)[0]
        return out.to(feeds[HIDDEN].dtype)


def open_flux_backend(engine_path: Path, spec: FluxSpec, fmt: str, precision: str, provider: str = "auto",
                      device: str = "cpu", threads: int | None = None,
                      initializer_overrides: dict[str, Any] | None = None) -> FluxBackend:
    """The backend for a FLUX transformer engine file (ONNX through onnxruntime, OpenVINO IR), on the CPU."""
    if device.startswith("cuda") or provider not in ("auto", "cpu"):
        raise InvalidInputError(f"{engine_path.name}: FLUX transformer engines run on the CPU here (onnxruntime's "
                                f"CPU provider or OpenVINO), not on {provider if provider != 'auto' else device}")
    if fmt == "openvino":
        if initializer_overrides:
            raise InvalidInputError(f"{engine_path.name}: OpenVINO engines have their LoRA stack baked in; export "
                                    "one for this stack")
        return OpenVinoFluxBackend(engine_path, spec, precision=precision, threads=threads)
    if fmt != "onnx":
        raise InvalidInputError(f"{engine_path.name} is a {fmt} engine; FLUX transformers export to onnx or openvino")
    return OrtFluxBackend(engine_path, spec, threads=threads, initializer_overrides=initializer_overrides)
