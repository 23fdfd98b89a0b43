"""The UNet traced with its sinusoidal time embeddings as graph inputs (runtime/engines/time_embedding.py says why).

``EmbeddingInputsWrapper`` has ``UNetExportWrapper``'s positional interface with ``timestep`` and
``time_ids`` replaced by ``timestep_embedding`` and ``time_ids_embedding``: during the call the UNet's
``time_proj`` (and SDXL's ``add_time_proj``) are swapped for modules that return those inputs, so the
traced graph starts at the embedding MLPs and never sees ``sin``/``cos`` of a large number.
"""

from __future__ import annotations

import torch


class _FedEmbedding(torch.nn.Module):
    """Stands in for a ``Timesteps`` module: returns the embedding the graph was given."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, _values: torch.Tensor) -> torch.Tensor:
        return self.value


class EmbeddingInputsWrapper(torch.nn.Module):
    """Positional inputs ``(sample, timestep_embedding, encoder_hidden_states[, text_embeds, time_ids_embedding])``."""

    def __init__(self, unet: torch.nn.Module, sdxl: bool) -> None:
        super().__init__()
        self.unet = unet
        self.sdxl = sdxl

    def forward(self, sample: torch.Tensor, timestep_embedding: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids_embedding: torch.Tensor | None = None
                ) -> torch.Tensor:
        fed = {"time_proj": timestep_embedding}
        if self.sdxl:
            fed["add_time_proj"] = time_ids_embedding
        originals = {name: getattr(self.unet, name) for name in fed}
        try:
            for name, value in fed.items():
                setattr(self.unet, name, _FedEmbedding(value))
            added = {"text_embeds": text_embeds, "time_ids": time_ids_embedding} if self.sdxl else None
            # the timestep passed on only reaches the swapped time_proj; its value is never used
            return self.unet(sample, timestep_embedding[:, 0], encoder_hidden_states, added_cond_kwargs=added,
                             return_dict=False)[0]
        finally:
            for name, module in originals.items():
                setattr(self.unet, name, module)
