"""``backdrop run --checkpoint``: the diffusion options of the run command (same runtime as BackdropInpaint)."""

from __future__ import annotations

import argparse

from ..runtime.errors import InvalidInputError
from ..runtime.inpainting.memory import OFFLOAD_MODES, TEXT_ENCODER_QUANTS


def add_inpaint_arguments(run: argparse.ArgumentParser) -> None:
    """The diffusion options of ``backdrop run`` (all ignored without --checkpoint)."""
    from ..runtime.inpainting.geometry import OUTPAINT_CHOICES
    from ..runtime.inpainting.loader import DTYPES
    from ..runtime.inpainting.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

    group = run.add_argument_group("diffusion inpainting (with --checkpoint)")
    group.add_argument("--checkpoint", default=None,
                       help="inpainting model: a file in models/checkpoints or a folder in models/diffusers "
                            "(SD1.5, SDXL, FLUX.1 Fill or Kontext; prefix checkpoints/ or diffusers/ when both "
                            "hold the name), or a FLUX.1 Fill / Kontext transformer file as "
                            "diffusion_models/<file> (legacy unet/<file>) with --text-encoders and --vae; without "
                            "it the weight-free studio backdrop is drawn")
    group.add_argument("--lora", action="append", default=[], metavar="NAME[:STRENGTH]",
                       help="LoRA in models/loras; repeat to stack (default strength 1.0)")
    group.add_argument("--fuse-loras", action="store_true", help="fuse the LoRA stack into the weights")
    group.add_argument("--prompt", default=None, help="positive prompt (default: composed from captions + style)")
    group.add_argument("--negative", default=None, help="negative prompt (default: the style's)")
    group.add_argument("--steps", type=int, default=25)
    group.add_argument("--cfg", type=float, default=None,
                       help="guidance scale (default: the model's: 7 for SD1.5/SDXL; for FLUX its distilled "
                            "guidance, 30 for FLUX.1 Fill and 2.5 for Kontext; for Qwen-Image-Edit true CFG "
                            "with the negative prompt, 4)")
    group.add_argument("--scheduler", choices=list(SCHEDULERS), default=DEFAULT_SCHEDULER)
    group.add_argument("--strength", type=float, default=1.0)
    group.add_argument("--variations", type=int, default=1, help="backgrounds per input")
    group.add_argument("--resolution", type=int, default=0, help="working size; 0 = the model's native size")
    group.add_argument("--outpaint", choices=list(OUTPAINT_CHOICES), default="none",
                       help="extend the canvas to this aspect ratio")
    group.add_argument("--seam-feather", type=int, default=6, help="blend width outside the product, pixels")
    group.add_argument("--color-match", type=float, default=1.0, help="seam colour-cast removal 0..1")
    group.add_argument("--dtype", choices=list(DTYPES), default="auto")
    group.add_argument("--tokenizer-dir", default=None,
                       help="folder with CLIP vocab.json + merges.txt for single-file checkpoints")
    group.add_argument("--text-encoders", default=None, metavar="CLIP_L,T5",
                       help="FLUX single files (--checkpoint diffusion_models/<file>): the CLIP-L and/or T5-XXL "
                            "files in models/text_encoders (legacy models/clip), comma-separated, e.g. "
                            "clip_l.safetensors,t5xxl_fp16.safetensors (default: the one fitting file of each kind "
                            "there, or what an all-in-one checkpoint holds)")
    group.add_argument("--vae", default=None, metavar="NAME",
                       help="FLUX single files: the autoencoder in models/vae, e.g. ae.safetensors (default: the "
                            "one fitting file there)")
    group.add_argument("--t5-tokenizer-dir", default=None,
                       help="FLUX single files: folder with the T5 tokenizer (tokenizer.json or spiece.model; default: "
                            "$BACKDROP_T5_TOKENIZER, else tokenizer_2/ of a FLUX folder in models/diffusers)")
    group.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                       help="GPU memory: 'model' keeps each model in CPU memory and moves it to the GPU while it runs "
                            "(diffusers' model CPU offload), 'sequential' layer by layer (least memory, slowest); "
                            "needs a GPU")
    group.add_argument("--text-encoder-quant", choices=TEXT_ENCODER_QUANTS, default="none",
                       help="int8: FLUX's T5-XXL or Qwen-Image-Edit's text encoder with int8 weights (torchao "
                            "weight-only int8: half the memory; the 'memory' extra)")
    group.add_argument("--feature-cache", type=int, default=0, metavar="N",
                       help="DeepCache-style feature cache: the full UNet every N steps (2..10), deep features "
                            "reused in between; faster, slightly different output (0 = off; torch UNet only)")
    group.add_argument("--engine", default=None, metavar="NAME",
                       help="run the UNet (or the FLUX transformer) on an exported engine: openvino/<file>.xml, "
                            "onnx/<file>.onnx or "
                            "tensorrt/<file>.engine from the models folders; or 'auto': the engine kind "
                            "`backdrop bench --backends auto` chose on this CPU, exported for this checkpoint and "
                            "LoRA stack (or reused from the engine cache), or the UNet compiled with frozen weights "
                            "when that won (compiled on the first step)")
    group.add_argument("--engine-components", action="store_true",
                       help="with an OpenVINO --engine: run the text encoder(s) and the VAE on engines too "
                            "(exported beside the UNet engine; with 'auto' they are exported when missing)")
    group.add_argument("--engine-threads", type=int, default=0, help="engine CPU threads (0 = all cores)")
    group.add_argument("--engine-memory", type=float, default=None, metavar="GIB",
                       help="with --engine: memory the engine's export (auto) and loading may use, GiB (default: "
                            "what the machine has available); what would need more is not started (auto: the run "
                            "stays on torch; a named engine: an error with the need)")
    group.add_argument("--candidates", type=int, default=0, metavar="K",
                       help="generate K backgrounds (seeds seed..seed+K-1), rank them by measured defects (seam, "
                            "leaked product colour, colour cast against the style's palette, clutter) and keep the "
                            "best --keep-best; the scores go to the prompt JSON (written with this option)")
    group.add_argument("--keep-best", type=int, default=None, metavar="N",
                       help="with --candidates: how many of the best to write, best first (default 1)")
    group.add_argument("--aesthetic", default="auto", metavar="PREDICTOR",
                       help="with --candidates: a learned aesthetic rating joins the ranking (the LAION "
                            "improved-aesthetic-predictor on CLIP image embeddings): 'auto' (default) uses the one "
                            "predictor in models/aesthetic when there is one, 'none' never, or name a file there")
    group.add_argument("--clip-vision", default=None, metavar="NAME",
                       help="with an aesthetic predictor: its CLIP vision encoder in models/clip_vision (default: the "
                            "one file there whose embeddings fit the predictor)")
    group.add_argument("--upscale", default=None, metavar="METHOD",
                       help="generate at a reduced size, then upscale and paste the full-resolution product back "
                            "again: 'lanczos' (no weights) or a super-resolution model file in "
                            "models/upscale_models (read by spandrel: the upscale extra)")
    group.add_argument("--upscale-to", choices=("original", "2x", "3x"), default="original",
                       help="with --upscale: 'original' generates at the model's working size and upscales to the "
                            "photo's size; 2x / 3x generate at a half / a third of the photo's size. The output is "
                            "always the photo's size, its product pixels exact")


def parse_lora(text: str) -> tuple[str, float]:
    """``name.safetensors:0.8`` -> (name, 0.8); the strength defaults to 1."""
    name, sep, strength = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        return name, float(strength)
    except ValueError:
        raise InvalidInputError(f"--lora {text!r}: the strength after ':' must be a number") from None
