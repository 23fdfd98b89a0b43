"""Sampler choices, named as in ComfyUI where an equivalent exists, built from the model's own config.

``lcm`` and ``tcd`` are the schedulers of step-distilled models and LoRAs (LCM-LoRA, TCD-LoRA, Hyper-SD):
with such a LoRA they give a usable image in 4-8 steps at a low CFG (1-2). With an ordinary model they
run but need many more steps; ``backdrop bench --fast-scheduler`` reports the speed-up and the output
difference against the full schedule.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError

# name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
FEW_STEP_SCHEDULERS = ("lcm", "tcd")  # for step-distilled LoRAs: 4-8 steps, CFG 1-2
DEFAULT_SCHEDULER = "euler"


def make_scheduler(name: str, base_config: dict[str, Any]):
    """A fresh scheduler of kind ``name`` sharing the model's training noise schedule."""
    if name not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(dict(base_config), **overrides)
