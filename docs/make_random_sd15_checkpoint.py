"""Write a full-size SD1.5 *inpainting* checkpoint with random weights (no download, no real model).

ComfyUI tells model types apart by tensor shapes, so a tiny test UNet is not recognised as SD1.5. This
builds the real architecture (9-channel UNet, VAE, CLIP-L text encoder) from the pack's shipped configs
(runtime/inpainting/configs/sd15/) with the real diffusers/transformers classes, converts it to the
original single-file layout (tests/inpaint_fixtures.py ``to_ldm``) and saves it as fp16 safetensors
(about 2.1 GB). It loads in ComfyUI's CheckpointLoaderSimple and in BackdropInpaintLoader, so native
KSampler and Backdrop workflows can run end to end; the pictures it makes are noise.

    .venv/bin/python docs/make_random_sd15_checkpoint.py \\
        --out /tmp/comfyui/models/checkpoints/sd-v1-5-inpainting.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from comfyui_backdrop.runtime.inpainting.single_file import CONFIGS_DIR
from comfyui_backdrop.tests.fixtures.inpaint_fixtures import to_ldm

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def read_config(component: str) -> dict:
    return json.loads((CONFIGS_DIR / "sd15" / component / "config.json").read_text(encoding="utf-8"))


def build_components(seed: int, dtype: torch.dtype) -> SimpleNamespace:
    """UNet, VAE and text encoder of SD1.5 inpainting, randomly initialised, cast to ``dtype`` one by one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(read_config("unet")).to(dtype)
    if unet.config.in_channels != 9:
        raise SystemExit(f"the shipped sd15 UNet config has {unet.config.in_channels} input channels, not 9")
    vae = AutoencoderKL.from_config(read_config("vae")).to(dtype)
    text_config = {k: v for k, v in read_config("text_encoder").items() if k not in ("architectures",)}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).to(dtype)
    return SimpleNamespace(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval())


def save_exclusive(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    """Save next to ``out`` and hard-link into place: ``out`` is never overwritten, never half-written."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.link(tmp, out)
    except FileExistsError:
        raise SystemExit(f"{out} already exists; remove it or choose another --out") from None
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} already exists; remove it or choose another --out", file=sys.stderr)
        return 1

    started = time.monotonic()
    with torch.no_grad():
        state = to_ldm(build_components(args.seed, DTYPES[args.dtype]))
    built = time.monotonic() - started
    metadata = {"format": "pt", "note": f"random weights (seed {args.seed}), SD1.5 inpainting architecture; "
                                        "made by docs/make_random_sd15_checkpoint.py for testing only"}
    save_exclusive(state, args.out, metadata)
    params = sum(t.numel() for t in state.values())
    size = args.out.stat().st_size / 2**30
    print(f"wrote {args.out}: {len(state)} tensors, {params / 1e6:.0f}M parameters, {size:.2f} GiB "
          f"({built:.0f} s to build, {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
