"""Text encoders and the VAE on engines, dressed as the torch modules a diffusers pipeline calls.

The inpainting pipelines use these parts through a small surface, and these classes provide exactly it:

- text encoder: ``text_encoder(input_ids, attention_mask=None, output_hidden_states=...)`` then ``[0]``
  (SD1.5: the last hidden state; SDXL's second encoder: the projected pooled embedding) and, for
  SDXL, ``.hidden_states[-2]`` (the penultimate layer); plus ``.config``, ``.dtype`` and ``.device``.
  The engine computes both outputs; asking for another layer (``clip_skip``) or passing an attention
  mask is an error that says to use the torch text encoder.
- VAE: ``vae.encode(x).latent_dist`` (a ``DiagonalGaussianDistribution`` built from the engine's
  moments, so sampling with the pipeline's generator is unchanged), ``vae.decode(z, return_dict=False)[0]``,
  and ``.config`` (scaling factor, block_out_channels, latents mean/std...).

Every engine here is an ``OpenVinoModel`` (numpy in and out); tensors go back to the caller's dtype.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..errors import InvalidInputError
from .stand_in import EngineStandIn

TEXT_INPUT = "input_ids"
TEXT_OUTPUTS = ("output_0", "penultimate_hidden_state")
VAE_ENCODER_INPUT, VAE_ENCODER_OUTPUT = "image", "moments"
VAE_DECODER_INPUT, VAE_DECODER_OUTPUT = "latents", "image"


class _EngineModule(EngineStandIn):
    """Common ``dtype`` / ``device`` / ``to`` surface: the engine keeps its own precision on the CPU."""

    cpu_only = True

    def __init__(self, engine: Any, config: Any, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, dtype, "cpu")
        self.engine = engine

    def extra_repr(self) -> str:
        return f"engine={self.engine.model_path.name}, precision={self.engine.precision}"


class _Hidden:
    """``hidden_states`` of an engine text encoder: only the penultimate layer ([-2]) is there."""

    def __init__(self, penultimate: torch.Tensor, last: torch.Tensor | None) -> None:
        self._penultimate, self._last = penultimate, last

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == -2:
            return self._penultimate
        raise InvalidInputError(f"the text encoder engine computes the penultimate hidden state only, not layer "
                                f"{index} (clip_skip needs the torch text encoder)")


class TextEncoderOutput:
    """``out[0]``, ``out.hidden_states[-2]``, as transformers' CLIP outputs give them."""

    def __init__(self, first: torch.Tensor, penultimate: torch.Tensor) -> None:
        self._first = first
        self.hidden_states = _Hidden(penultimate, None)

    def __getitem__(self, index: int) -> Any:
        if index == 0:
            return self._first
        if index == -1:
            return self.hidden_states
        raise InvalidInputError(f"the text encoder engine output has no item {index}")


class EngineTextEncoder(_EngineModule):
    """A CLIP text encoder (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) on an engine."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **unsupported: Any) -> TextEncoderOutput:
        if unsupported:
            raise InvalidInputError(f"the text encoder engine cannot take {sorted(unsupported)}")
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise InvalidInputError("the text encoder engine was exported without an attention mask; this model "
                                    "asks for one, so use the torch text encoder")
        first, penultimate = self.engine.run({TEXT_INPUT: input_ids.detach().cpu().long().numpy()})
        return TextEncoderOutput(torch.from_numpy(first).to(self._dtype), torch.from_numpy(penultimate).to(self._dtype))


class EngineVAE(_EngineModule):
    """An ``AutoencoderKL`` whose encoder and decoder run on engines (either may be None: torch is kept)."""

    def __init__(self, encoder: Any, decoder: Any, vae: Any) -> None:
        super().__init__(decoder or encoder, vae.config, dtype=torch.float32)
        self.encoder_engine, self.decoder_engine = encoder, decoder
        self.torch_vae = vae if encoder is None or decoder is None else None
        self.use_slicing = self.use_tiling = False

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if self.encoder_engine is None:
            return self.torch_vae.encode(x.to(self.torch_vae.dtype), return_dict=return_dict)
        moments = self.encoder_engine.run({VAE_ENCODER_INPUT: x.detach().float().cpu().numpy()})[0]
        dist = DiagonalGaussianDistribution(torch.from_numpy(moments).to(x.dtype))
        return SimpleNamespace(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None, **_: Any) -> Any:
        if self.decoder_engine is None:
            return self.torch_vae.decode(z.to(self.torch_vae.dtype), return_dict=return_dict)
        image = torch.from_numpy(self.decoder_engine.run({VAE_DECODER_INPUT: z.detach().float().cpu().numpy()})[0])
        image = image.to(z.dtype)
        return SimpleNamespace(sample=image) if return_dict else (image,)

    def extra_repr(self) -> str:
        parts = [f"{name}={e.model_path.name} ({e.precision})" for name, e in
                 (("encoder", self.encoder_engine), ("decoder", self.decoder_engine)) if e is not None]
        return ", ".join(parts)
