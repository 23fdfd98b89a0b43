"""Caption task presets and how each model family is asked for them.

A task gives two instructions: one for the product (shown a crop of the product) and one for the
background (shown the photo with the product filled out). Each instruction is written three ways,
because the families are prompted differently:

* chat models (Qwen2-VL, Qwen2.5-VL, other chat-templated VLMs) get a natural-language instruction,
  BLIP-2 gets it as ``Question: ... Answer:``;
* Florence-2 only understands its task tokens (``<CAPTION>``, ``<MORE_DETAILED_CAPTION>``...);
* BLIP continues a text prefix ("a photo of"), which stays part of the caption.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

FAMILIES = ("florence2", "blip", "blip2", "qwen_vl", "chat", "plain")


@dataclass(frozen=True)
class Instruction:
    chat: str
    florence: str
    blip_prefix: str

    @classmethod
    def custom(cls, text: str) -> Instruction:
        """The same user text for every family (Florence-2 also accepts a bare task token here)."""
        return cls(chat=text, florence=text, blip_prefix=text)


@dataclass(frozen=True)
class TaskPreset:
    name: str
    description: str
    product: Instruction
    background: Instruction


_PRODUCT = Instruction(
    chat="Describe the product in this photo in one short sentence: what it is, its material and its colour.",
    florence="<CAPTION>",
    blip_prefix="a product photo of",
)

TASKS: dict[str, TaskPreset] = {
    "canvas_scene": TaskPreset(
        "canvas_scene",
        "Canvas captions: the product, and the scene around it (setting, surface, lighting, props, colours)",
        product=_PRODUCT,
        background=Instruction(
            chat=("Describe the scene around the product, not the product itself: the setting, the surface it "
                  "stands on, the lighting, the props and the colours. Answer in one or two sentences."),
            florence="<MORE_DETAILED_CAPTION>",
            blip_prefix="a photo of",
        ),
    ),
    "detailed": TaskPreset(
        "detailed",
        "long, detailed captions of the product and of the background",
        product=Instruction("Describe this product in detail.", "<DETAILED_CAPTION>", "a detailed photo of"),
        background=Instruction("Describe this image in detail.", "<MORE_DETAILED_CAPTION>", "a detailed photo of"),
    ),
    "short": TaskPreset(
        "short",
        "one short caption each",
        product=Instruction("Give a short caption for this product.", "<CAPTION>", ""),
        background=Instruction("Give a short caption for this scene.", "<CAPTION>", ""),
    ),
    "custom": TaskPreset(
        "custom",
        "the background caption follows custom_instruction; the product caption is the Canvas one",
        product=_PRODUCT,
        background=Instruction.custom(""),
    ),
}

DEFAULT_TASK = "canvas_scene"


def task_names() -> list[str]:
    return list(TASKS)


def instructions_for(task: str, custom_instruction: str = "") -> tuple[Instruction, Instruction]:
    """(product, background) instructions for ``task``; ``custom`` needs a non-empty ``custom_instruction``.

    ``custom_instruction`` is only used by the ``custom`` task.
    """
    preset = TASKS.get(task)
    if preset is None:
        raise InvalidInputError(f"unknown caption task {task!r}; available: {', '.join(TASKS)}")
    if task == "custom":
        text = " ".join(custom_instruction.split())
        if not text:
            raise InvalidInputError("the 'custom' caption task needs a custom_instruction")
        return preset.product, Instruction.custom(text)
    return preset.product, preset.background


def render_instruction(family: str, instruction: Instruction) -> str:
    """The text handed to the processor for ``family`` (chat families still get wrapped in their template)."""
    if family == "florence2":
        return instruction.florence
    if family == "blip":
        return instruction.blip_prefix
    if family == "blip2":
        return f"Question: {instruction.chat} Answer:"
    if family in ("qwen_vl", "chat", "plain"):
        return instruction.chat
    raise InvalidInputError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
