"""BackdropTrainLoRA: a thin adapter over runtime.training (dataset prep, stage 1, optional stage 2).

Inside ComfyUI any /prompt client can queue a node, so the node reads only folders inside ComfyUI's input folder
(a combo, like BackdropLoadImageFolder) and writes its working files (masks, manifest, checkpoints) under the output
folder's ``backdrop-training/<dataset>``, never into the user's photo folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .comfy_host import HostedNode

CATEGORY = "Backdrop/training"


def dataset_choices(input_dir: Path) -> list[str]:
    from ..runtime.image_folder import subfolders

    return subfolders(input_dir)


def resolve_dataset_folder(dataset: str, input_dir: Path) -> Path:
    """A folder listed by ``dataset_choices`` (inside ComfyUI's input folder); anything else is refused."""
    from ..runtime.errors import InvalidInputError

    text = (dataset or "").strip()
    if text not in dataset_choices(input_dir):
        raise InvalidInputError(f"dataset {text!r} is not a folder in ComfyUI's input folder {input_dir}; "
                                "BackdropTrainLoRA reads only folders there: put the photos in a folder under input/ "
                                "and pick it from the list")
    return input_dir / text


def resolve_inside_input(text: str, input_dir: Path, what: str) -> Path:
    """``text`` (relative, or absolute but inside) as a path inside ``input_dir``; '..' escapes are refused."""
    from ..runtime.errors import InvalidInputError

    root = os.path.abspath(input_dir)
    candidate = os.path.abspath(os.path.join(root, os.path.expanduser(text.strip())))
    if os.path.commonpath([root, candidate]) != root:
        raise InvalidInputError(f"{what} {text!r} is outside ComfyUI's input folder {input_dir}; BackdropTrainLoRA "
                                "reads only files and folders inside it")
    if not os.path.exists(candidate):
        raise InvalidInputError(f"{what} {text!r} was not found in ComfyUI's input folder {input_dir}")
    return Path(candidate)


class BackdropTrainLoRA(HostedNode):
    """Train a background-inpainting LoRA on all UNet layers (SD) or all transformer blocks (FLUX.1 Fill / Kontext)
    from a folder of product photos."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": ("BACKDROP_PIPELINE", {"tooltip": "base model from BackdropInpaintLoader "
                                                   "(its LoRA stack is ignored: training starts from the base)"}),
                "dataset": (dataset_choices(cls.host.input_directory()),
                            {"default": ".", "tooltip": "a folder of product photos inside ComfyUI's input folder "
                                                        "('.' = the input folder itself); .txt files beside images "
                                                        "are captions"}),
                "lora_name": ("STRING", {"default": "backdrop_background", "tooltip": "file name in models/loras"}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 100000, "tooltip": "stage 1 training steps"}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "LoRA rank (its size); alpha = rank"}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 1.0, "step": 1e-5,
                                            "tooltip": "AdamW learning rate"}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                       "tooltip": "square training size in pixels"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                 "tooltip": "seed of the data order, mask augmentation and noise"}),
                "background_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                                "tooltip": "loss weight of the background"}),
                "product_weight": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.05,
                                             "tooltip": "loss weight of the product region"}),
                "caption_dropout": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.05,
                                              "tooltip": "probability of a training step without caption"}),
                "checkpoint_every": ("INT", {"default": 250, "min": 0, "max": 100000,
                                             "tooltip": "0: checkpoints only when interrupted"}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": "continue from the newest checkpoint"}),
            },
            "optional": {
                "captioner": ("BACKDROP_CAPTIONER", {"tooltip": "without one, captions come from image statistics"}),
                "curated": ("STRING", {"default": "", "tooltip": "stage 2: a folder of curated photos, or a CSV "
                                       "of 'image,score' rows naming dataset images, inside ComfyUI's input "
                                       "folder"}),
                "stage2_steps": ("INT", {"default": 0, "min": 0, "max": 100000,
                                         "tooltip": "stage 2 (curated fine-tune) steps; 0: no stage 2"}),
                "top_k": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "stage 2: best k (0: all)"}),
                "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5,
                                       "tooltip": "FLUX only: the distilled guidance the transformer is trained "
                                                  "with; 0 = the model's own (30 for FLUX.1 Fill [dev], 2.5 for "
                                                  "Kontext [dev]). Not used for SD"}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("the trained LoRA's file name in models/loras, ready for BackdropLoRA",
                       'dataset, steps and loss summary of the run (also shown on the node)')
    FUNCTION = "train"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Prepares masks + captions for a folder of product photos and trains a LoRA for background "
                   "inpainting (SD1.5, SDXL, FLUX.1 Fill or Kontext); the LoRA is saved in models/loras and loads "
                   "in BackdropLoRA and LoraLoader. "
                   "Reads only folders inside ComfyUI's input folder; its working files (masks, manifest, "
                   "checkpoints) go to output/backdrop-training/<dataset>, never into the photo folder. The run's "
                   "summary is shown on the node.")

    def train(self, pipeline, dataset: str, lora_name: str, steps: int, rank: int, learning_rate: float,
              resolution: int, seed: int, background_weight: float, product_weight: float, caption_dropout: float,
              checkpoint_every: int, resume: bool, captioner=None, curated: str = "", stage2_steps: int = 0,
              top_k: int = 0, guidance: float = 0.0):
        from ..runtime.training.dataset import working_dir
        from ..runtime.training.recipe import Recipe, run_recipe
        from ..runtime.training.trainer import TrainConfig

        input_dir = self.host.input_directory()
        folder = resolve_dataset_folder(dataset, input_dir)
        curated_text = (curated or "").strip()
        curated_path = resolve_inside_input(curated_text, input_dir, "curated") if curated_text else None
        dataset_dir = working_dir(self.host.output_directory(), "input" if dataset.strip() == "." else dataset)
        config = TrainConfig(steps=steps, rank=rank, learning_rate=learning_rate, resolution=resolution, seed=seed,
                             background_weight=background_weight, product_weight=product_weight,
                             caption_dropout=caption_dropout, checkpoint_every=checkpoint_every,
                             checkpoint_dir=str(dataset_dir / "checkpoints" / Path(lora_name).stem),
                             guidance=float(guidance) if guidance else None)
        recipe = Recipe(folder, lora_name, config, dataset_dir=dataset_dir, curated=curated_path,
                        stage2_steps=stage2_steps, top_k=top_k or None, resume=resume)
        result = run_recipe(pipeline.with_loras(()), recipe, captioner=captioner,
                            progress_factory=lambda label, total: self.host.progress(total))
        summary = result.summary()
        return {"ui": {"text": [summary]}, "result": (result.lora_path.name, summary)}


NODE_CLASS_MAPPINGS = {"BackdropTrainLoRA": BackdropTrainLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"BackdropTrainLoRA": "Backdrop Train LoRA (background inpainting)"}
