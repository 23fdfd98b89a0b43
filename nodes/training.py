"""BackdropTrainLoRA: a thin adapter over runtime.training (dataset prep, stage 1, optional stage 2)."""

from __future__ import annotations

from pathlib import Path

from .comfy_host import HostedNode

CATEGORY = "Backdrop/training"


def resolve_dataset_folder(dataset: str, input_dir: Path) -> Path:
    """An existing folder path as given, else a folder of that name under ComfyUI's input folder."""
    from ..runtime.errors import InvalidInputError

    text = dataset.strip()
    if not text:
        raise InvalidInputError("give a dataset folder: a path, or a folder name under ComfyUI's input folder")
    given = Path(text).expanduser()
    if given.is_dir():
        return given
    under_input = input_dir / text
    if under_input.is_dir():
        return under_input
    raise InvalidInputError(f"dataset folder {text!r} was found neither as a path nor under {under_input.parent}")


class BackdropTrainLoRA(HostedNode):
    """Train a background-inpainting LoRA on all UNet layers from a folder of product photos."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": ("BACKDROP_PIPELINE", {"tooltip": "base model from BackdropInpaintLoader "
                                                   "(its LoRA stack is ignored: training starts from the base)"}),
                "dataset": ("STRING", {"default": "", "tooltip": "folder of product photos: a path, or a folder "
                                       "under ComfyUI's input folder; .txt files beside images are captions"}),
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
                                       "of 'image,score' rows naming dataset images"}),
                "stage2_steps": ("INT", {"default": 0, "min": 0, "max": 100000,
                                         "tooltip": "stage 2 (curated fine-tune) steps; 0: no stage 2"}),
                "top_k": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "stage 2: best k (0: all)"}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("the trained LoRA's file name in models/loras, ready for BackdropLoRA",
                       'dataset, steps and loss summary of the run')
    FUNCTION = "train"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Prepares masks + captions for a folder of product photos and trains a LoRA for background "
                   "inpainting; the LoRA is saved in models/loras and loads in BackdropLoRA and LoraLoader.")

    def train(self, pipeline, dataset: str, lora_name: str, steps: int, rank: int, learning_rate: float,
              resolution: int, seed: int, background_weight: float, product_weight: float, caption_dropout: float,
              checkpoint_every: int, resume: bool, captioner=None, curated: str = "", stage2_steps: int = 0,
              top_k: int = 0):
        from ..runtime.training.dataset import default_output_dir
        from ..runtime.training.recipe import run_recipe
        from ..runtime.training.trainer import TrainConfig

        input_dir = self.host.input_directory()
        folder = resolve_dataset_folder(dataset, input_dir)
        dataset_dir = default_output_dir(folder)
        config = TrainConfig(steps=steps, rank=rank, learning_rate=learning_rate, resolution=resolution, seed=seed,
                             background_weight=background_weight, product_weight=product_weight,
                             caption_dropout=caption_dropout, checkpoint_every=checkpoint_every,
                             checkpoint_dir=str(dataset_dir / "checkpoints" / Path(lora_name).stem))
        curated_text = curated.strip()
        if curated_text and not curated_text.endswith(".csv"):
            curated_path = resolve_dataset_folder(curated_text, input_dir)
        else:
            curated_path = Path(curated_text).expanduser() if curated_text else None
        result = run_recipe(pipeline.with_loras(()), folder, lora_name, config, dataset_dir=dataset_dir,
                            captioner=captioner, curated=curated_path, stage2_steps=stage2_steps, top_k=top_k or None,
                            resume=resume, progress_factory=lambda label, total: self.host.progress(total))
        return (result.lora_path.name, result.summary())


NODE_CLASS_MAPPINGS = {"BackdropTrainLoRA": BackdropTrainLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"BackdropTrainLoRA": "Backdrop Train LoRA (background inpainting)"}
