"""Fitting a large pipeline on one GPU: model CPU offload (diffusers + accelerate) and an int8 text encoder (torchao).

FLUX.1's T5-XXL (4.7B parameters, 9.5 GB in bf16) and Qwen-Image-Edit's Qwen2.5-VL encoder run once per prompt,
so storing their linear weights as int8 (torchao's weight-only int8: weights quantised per output channel,
activations kept in the run dtype) halves their memory for a small change in the embeddings. Offload keeps the
weights in CPU memory and moves each model (``model``) or each layer (``sequential``) to the GPU only while it runs:
diffusers' ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload``, which need an accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

OFFLOAD_MODES = ("none", "model", "sequential")
TEXT_ENCODER_QUANTS = ("none", "int8")
# family -> the pipeline attribute holding its large text encoder
LARGE_TEXT_ENCODER = {"flux-fill": "text_encoder_2", "flux-kontext": "text_encoder_2",
                      "qwen-image-edit": "text_encoder"}
TORCHAO_MISSING = ("--text-encoder-quant int8 needs torchao, in the 'memory' extra: "
                   "pip install 'comfyui-backdrop[memory]' (or pip install torchao)")


@dataclass(frozen=True)
class MemoryOptions:
    """How a loaded pipeline is placed: ``offload`` (none | model | sequential) and ``text_encoder_quant``
    (none | int8, the family's large text encoder only)."""

    offload: str = "none"
    text_encoder_quant: str = "none"

    def check(self, family: str | None = None, device: str | None = None) -> None:
        """Raise ``InvalidInputError`` for an unknown choice, offload without a GPU, or int8 on a family whose text
        encoders are small (SD1.5/SDXL's CLIP)."""
        if self.offload not in OFFLOAD_MODES:
            raise InvalidInputError(f"unknown offload {self.offload!r}; choose one of {', '.join(OFFLOAD_MODES)}")
        if self.text_encoder_quant not in TEXT_ENCODER_QUANTS:
            raise InvalidInputError(f"unknown text encoder quantisation {self.text_encoder_quant!r}; choose one of "
                                    f"{', '.join(TEXT_ENCODER_QUANTS)}")
        if self.offload != "none" and device == "cpu":
            raise InvalidInputError(f"--offload {self.offload} moves models between CPU memory and a GPU; this run is "
                                    "on the CPU, where everything already lives in CPU memory: drop --offload")
        if self.text_encoder_quant != "none" and family is not None and family not in LARGE_TEXT_ENCODER:
            raise InvalidInputError(f"--text-encoder-quant applies to the large text encoders of FLUX.1 (T5-XXL) and "
                                    f"Qwen-Image-Edit (Qwen2.5-VL); {family}'s CLIP encoders are small")

    @property
    def key(self) -> tuple[str, str]:
        """What the model cache tells pipelines apart by."""
        return self.offload, self.text_encoder_quant


DEFAULT_MEMORY = MemoryOptions()


def place_pipeline(pipe: Any, family: str, device: str, memory: MemoryOptions = DEFAULT_MEMORY) -> None:
    """Quantise the large text encoder when asked, then move ``pipe`` to ``device`` or set up offload to it."""
    memory.check(family, device)
    if memory.text_encoder_quant == "int8":
        quantise_int8(getattr(pipe, LARGE_TEXT_ENCODER[family]))
    if memory.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif memory.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def quantise_int8(module: Any) -> None:
    """Replace the weights of every ``nn.Linear`` in ``module`` with torchao's weight-only int8, in place."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise InvalidInputError(TORCHAO_MISSING) from exc
    quantize_(module, Int8WeightOnlyConfig())
