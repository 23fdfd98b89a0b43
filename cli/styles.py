"""``backdrop styles``: list the style presets."""

from __future__ import annotations

import argparse


def list_styles(args: argparse.Namespace) -> int:
    """``backdrop styles [--verbose]``: the style presets, with prompts and palettes when verbose."""
    verbose = args.verbose
    from ..runtime.backdrop.styles import load_styles, styles_file

    print(f"# styles from {styles_file()}")
    for preset in load_styles().values():
        if verbose:
            hexes = " ".join("#{:02X}{:02X}{:02X}".format(*(round(c * 255) for c in v))
                             for v in preset.palette.values())
            print(f"{preset.name}\n  prompt:   {preset.prompt_text}\n  negative: {preset.negative_text}")
            print(f"  palette:  {hexes}")
        else:
            print(preset.name)
    return 0
