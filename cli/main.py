"""The ``backdrop`` command line: the same runtime as the ComfyUI nodes, headless."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..runtime.errors import BackdropError
from . import exit_codes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backdrop", description="New backgrounds for product photos; "
                                     "the product stays pixel-exact. Offline: models come from --models-dir.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="put products on a new background (weight-free studio backdrop by default)")
    run.add_argument("inputs", nargs="*", type=Path,
                     help="product photos, or folders of them (with --workflow: fed to its image input)")
    run.add_argument("--style", default="Minimal Studio", help="style preset name (see `backdrop styles`)")
    run.add_argument("--out", type=Path, default=Path("out"), help="output folder (files are never overwritten)")
    run.add_argument("--format", choices=("png", "jpg", "webp"), default="png",
                     help="output format; png keeps product pixels exact (16-bit input stays 16-bit)")
    run.add_argument("--models-dir", type=Path, default=None,
                     help="ComfyUI-style models folder (default: $BACKDROP_MODELS_DIR or ./models)")
    run.add_argument("--sam", default=None, help="SAM checkpoint name in models/sams (default: weight-free masker)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="torch device for models (auto: cuda when available)")
    run.add_argument("--box", default="", help="product box 'x0,y0,x1,y1' in pixels (overrides the automatic choice)")
    run.add_argument("--points", default="", help="product points 'x,y[,label];...' (label 0 = background)")
    run.add_argument("--grow", type=int, default=0, help="grow (>0) or shrink (<0) the product mask, pixels")
    run.add_argument("--feather", type=float, default=0.0, help="soften the mask edge outward, pixels")
    run.add_argument("--keep", choices=("main", "largest", "all"), default="main", help="mask components to keep")
    run.add_argument("--no-fill-holes", action="store_true", help="keep holes inside the product mask")
    run.add_argument("--no-edge-refine", action="store_true", help="skip the guided-filter edge refinement")
    run.add_argument("--shadow", type=float, default=None, help="contact shadow strength 0..1 (style default)")
    run.add_argument("--vignette", type=float, default=None, help="vignette strength 0..1 (style default)")
    run.add_argument("--light", type=float, default=None, help="key light strength 0..1 (style default)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed (diffusion noise; variation k uses seed+k; the studio backdrop's dither)")
    run.add_argument("--save-mask", action="store_true", help="also write the product mask as <name>_mask.png")
    run.add_argument("--captioner", default=None,
                     help="vision-language model folder in models/LLM for product/background captions "
                          "(default: captions from image statistics, no weights)")
    run.add_argument("--composition", default="centered", help="composition preset for the prompt")
    run.add_argument("--scene", default="", help="free scene/subject text added to the prompt")
    run.add_argument("--prompt-json", action="store_true",
                     help="write <name>_<style>.json with captions and the composed prompts "
                          "(always on with --captioner)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--max-megapixels", type=float, default=None,
                     help="refuse photos above this many megapixels before decoding them (default 67.1: any "
                          "camera photo; memory grows about 12 bytes a pixel)")
    from .inpaint_options import add_inpaint_arguments

    add_inpaint_arguments(run)
    from .watermark_options import add_watermark_arguments

    add_watermark_arguments(run)
    from .catalog.options import add_catalog_arguments

    add_catalog_arguments(run)
    from .workflow import add_workflow_arguments

    add_workflow_arguments(run)

    styles = sub.add_parser("styles", help="list the style presets")
    styles.add_argument("--verbose", "-v", action="store_true", help="show prompts and palettes too")

    from .accounts import add_accounts_parser
    from .bench import add_bench_parser
    from .serve import add_serve_parser
    from .train import add_train_parser
    from .verify import add_verify_parser

    add_bench_parser(sub)
    add_train_parser(sub)
    add_verify_parser(sub)
    add_serve_parser(sub)
    add_accounts_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``backdrop`` command; returns the exit code (0 ok, 1 some inputs failed, 2 usage or setup error,
    130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return _command(args)(args)
    except BackdropError as exc:
        print(f"backdrop: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("backdrop: interrupted (Ctrl-C)", file=sys.stderr)
        return exit_codes.INTERRUPTED


def entry() -> int:
    """The ``backdrop`` console script: tune malloc for large tensors (runtime/allocator.py; before any model
    loads), then :func:`main`. ``main`` alone leaves the calling process as it is."""
    from ..runtime.allocator import tune_allocator

    try:
        tune_allocator()
    except BackdropError as exc:
        print(f"backdrop: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    return main()


# command -> (module in cli/, function): imported only when chosen, so start-up stays fast
COMMANDS = {
    "run": ("run", "run_command"),
    "workflow": ("workflow", "run_workflow_command"),  # `backdrop run --workflow FILE`
    "workflow-catalog": ("catalog.workflow_run", "run_workflow_catalog_command"),  # ... --workers N
    "styles": ("styles", "list_styles"),
    "bench": ("bench", "run_bench"),
    "train-lora": ("train", "run_train"),
    "verify": ("verify", "run_verify"),
    "serve": ("serve", "run_serve"),
    "accounts": ("accounts", "run_accounts"),
}


def _command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``args.command``."""
    import importlib

    name = "workflow" if args.command == "run" and args.workflow is not None else args.command
    if name == "workflow" and args.workers is not None:
        name = "workflow-catalog"
    module, function = COMMANDS[name]
    run = getattr(importlib.import_module(f".{module}", __package__), function)
    if name == "serve":  # the server's jobs are `backdrop run`s: it takes that command's defaults from here
        from functools import partial

        return partial(run, run_defaults=vars(build_parser().parse_args(["run", "-"])))
    return run


if __name__ == "__main__":
    raise SystemExit(main())
