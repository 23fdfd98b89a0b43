"""A loaded vision-language model plus its processor, asked for one caption at a time."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidModelError
from .tasks import Instruction, render_instruction

CHAT_FAMILIES = ("qwen_vl", "chat")


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated. Beam search without sampling is deterministic by itself; with
    ``sampling`` the ``seed`` makes it so (the global torch RNG is left as it was)."""

    max_new_tokens: int = 64
    num_beams: int = 3
    sampling: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096:
            raise InvalidInputError(f"max_new_tokens must be 1..4096, got {self.max_new_tokens}")
        if not 1 <= self.num_beams <= 16:
            raise InvalidInputError(f"num_beams must be 1..16, got {self.num_beams}")
        if self.sampling and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise InvalidInputError("sampling needs temperature > 0 and 0 < top_p <= 1")
        if not 0 <= self.seed < 2**64:
            raise InvalidInputError(f"seed must be 0..2**64-1, got {self.seed}")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                  "do_sample": self.sampling}
        if self.sampling:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Captioner:
    """A VLM ready to caption: ``caption(image, instruction, settings) -> str``."""

    model: Any
    processor: Any
    family: str
    name: str
    device: str
    dtype: Any

    def prompt_for(self, instruction: Instruction) -> str:
        """The exact text given to the processor (chat families: after the chat template)."""
        text = render_instruction(self.family, instruction)
        if self.family in CHAT_FAMILIES:
            if not getattr(self.processor, "chat_template", None):
                raise InvalidModelError(f"models/LLM/{self.name} has no chat template (chat_template.jinja or "
                                        "chat_template in the processor/tokenizer config)")
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text

    def caption(self, image: np.ndarray, instruction: Instruction, settings: GenerationSettings | None = None) -> str:
        """One caption for an [H,W,3] float image in 0..1."""
        import torch

        from .views import to_pil

        settings = settings or GenerationSettings()
        prompt = self.prompt_for(instruction)
        pil = to_pil(image)
        try:
            if self.family == "blip" and not prompt:
                inputs = self.processor(images=pil, return_tensors="pt")
            else:
                inputs = self.processor(images=[pil], text=[prompt], return_tensors="pt")
        except Exception as exc:  # processors raise ValueError/TypeError/KeyError for bad prompts
            raise InvalidInputError(f"{self.name} could not prepare the prompt {prompt!r}: {exc}") from exc
        inputs = {k: self._to_device(v) for k, v in inputs.items()}
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed)
            output = self.model.generate(**inputs, **settings.generate_kwargs())
        output = _strip_echo(output, inputs.get("input_ids"))
        text = self.processor.batch_decode(output, skip_special_tokens=True)[0]
        return clean_caption(text)

    def _to_device(self, value):
        import torch

        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(self.device, self.dtype)
        return value.to(self.device)


def _strip_echo(output, input_ids):
    """Decoder-only models return the prompt before the answer; drop it when it is there verbatim."""
    if input_ids is None or output.shape[1] < input_ids.shape[1]:
        return output
    length = input_ids.shape[1]
    if bool((output[:, :length] == input_ids.to(output.device)).all()):
        return output[:, length:]
    return output


_LEFTOVER_TAGS = re.compile(r"</?s>|<pad>|<\|[a-z_]+\|>")


def clean_caption(text: str) -> str:
    """One line, single spaces, no leftover special tokens or control characters."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in _LEFTOVER_TAGS.sub(" ", text))
    return " ".join(text.split())
