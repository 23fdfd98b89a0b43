"""Write a 'small' random-weight FLUX.1 Fill diffusers folder for timing the transformer step with `backdrop bench`.

The test suite's FLUX Fill (tests/fixtures/flux_fixtures.py) is tiny; this one has a 9.3M-parameter transformer
(2 double and 4 single blocks, 4 heads of 64), large enough that a step is not all per-op overhead. Random weights:
a timing and parity model, not an image generator.

    .venv/bin/python benchmarks/make_small_flux.py --models-dir /tmp/fluxc/models
    .venv/bin/backdrop bench --model diffusers/small-flux-fill --models-dir /tmp/fluxc/models \\
        --backends eager,ort,openvino --precisions fp32,int8 --size 256 --batch 1 --tokens 64 --rounds 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures, as the other benchmarks do

NAME = "small-flux-fill"


def build(models_dir: Path) -> Path:
    """Save the small FLUX.1 Fill pipeline as models_dir/diffusers/small-flux-fill and return its folder."""
    import torch
    from diffusers import FluxTransformer2DModel

    from tests.fixtures.flux_fixtures import build_tiny_flux
    from tests.fixtures.inpaint_fixtures import write_tiny_tokenizer

    pipe = build_tiny_flux(write_tiny_tokenizer(models_dir.parent / "clip_tokenizer"), seed=0)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384, out_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=[16, 24, 24])
    pipe.register_modules(transformer=transformer)
    folder = models_dir / "diffusers" / NAME
    pipe.save_pretrained(folder)
    print(f"{folder}: transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.1f}M parameters")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="models folder to write diffusers/ into")
    build(parser.parse_args().models_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
