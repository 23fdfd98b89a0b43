"""``backdrop train-lora``: prepare a dataset folder and train a background-inpainting LoRA."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runtime.training.augment import AUGMENTATIONS


def add_train_parser(subparsers) -> None:
    """Register ``train-lora`` on the ``backdrop`` sub-command parser."""
    train = subparsers.add_parser("train-lora", help="train a background-inpainting LoRA on a folder of product photos")
    train.add_argument("dataset", type=Path, help="folder of product photos (.txt files beside them are captions)")
    train.add_argument("--model", required=True,
                       help="base inpainting model: checkpoints/<file> or diffusers/<folder> in the models dir "
                            "(SD1.5, SDXL, FLUX.1 Fill or FLUX.1 Kontext)")
    train.add_argument("--name", required=True, help="LoRA file name to write in models/loras (never overwritten)")
    train.add_argument("--models-dir", type=Path, default=None,
                       help="ComfyUI-style models folder (default: $BACKDROP_MODELS_DIR or ./models)")
    train.add_argument("--dataset-dir", type=Path, default=None,
                       help="where masks + manifest.json go (default: <dataset>/.backdrop-dataset)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--rank", type=int, default=16)
    train.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    train.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument("--resolution", type=int, default=512,
                       help="square training size (a multiple of 8; of 16 for FLUX)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--background-weight", type=float, default=1.0, help="loss weight of the background region")
    train.add_argument("--product-weight", type=float, default=0.1, help="loss weight of the product region")
    train.add_argument("--caption-dropout", type=float, default=0.1, help="probability of training with no caption")
    train.add_argument("--mask-augment", default=",".join(AUGMENTATIONS),
                       help=f"comma-separated mask augmentations from {', '.join(AUGMENTATIONS)}")
    train.add_argument("--checkpoint-every", type=int, default=0, help="save a checkpoint every N steps (0: never)")
    train.add_argument("--checkpoint-dir", type=Path, default=None,
                       help="checkpoint folder (default: <dataset-dir>/checkpoints/<name>)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    train.add_argument("--curated", type=Path, default=None,
                       help="stage 2: a folder of curated photos, or a CSV of 'image,score' rows from the dataset")
    train.add_argument("--stage2-steps", type=int, default=0, help="stage 2 steps (0: no stage 2)")
    train.add_argument("--top-k", type=int, default=None, help="stage 2: keep the k best-scored images")
    train.add_argument("--score-weighted", action="store_true", help="stage 2: sample images by score")
    train.add_argument("--captioner", default=None, help="VLM folder in models/LLM for captions "
                       "(default: captions from image statistics)")
    train.add_argument("--guidance", type=float, default=None,
                       help="FLUX: the distilled guidance fed to the transformer while training (default: the "
                            "model's own, 30 for FLUX.1 Fill [dev], 2.5 for Kontext [dev]); not used for SD")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                       help="GPU autocast precision")
    train.add_argument("--no-gradient-checkpointing", action="store_true")
    train.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    from ..runtime.training.dataset import default_output_dir
    from ..runtime.training.trainer import TrainConfig

    dataset_dir = args.dataset_dir or default_output_dir(args.dataset)
    checkpoint_dir = args.checkpoint_dir or dataset_dir / "checkpoints" / Path(args.name).stem
    return TrainConfig(steps=args.steps, rank=args.rank, alpha=args.alpha, learning_rate=args.lr,
                       batch_size=args.batch_size, resolution=args.resolution, seed=args.seed,
                       background_weight=args.background_weight, product_weight=args.product_weight,
                       caption_dropout=args.caption_dropout,
                       mask_augmentations=tuple(a.strip() for a in args.mask_augment.split(",") if a.strip()),
                       checkpoint_every=args.checkpoint_every, checkpoint_dir=str(checkpoint_dir),
                       gradient_checkpointing=False if args.no_gradient_checkpointing else None,
                       mixed_precision=args.mixed_precision, guidance=args.guidance)


def run_train(args: argparse.Namespace) -> int:
    """Run ``train-lora``; returns the exit code. Ctrl-C saves a checkpoint and exits with 130."""
    from ..runtime.errors import Interrupted
    from ..runtime.models import models_dir_locator

    with models_dir_locator(args.models_dir):
        try:
            return _train(args)
        except (KeyboardInterrupt, Interrupted):
            print("backdrop: training interrupted; rerun with --resume to continue from the last checkpoint",
                  file=sys.stderr)
            return 130


def _train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm.auto import tqdm

    from ..runtime.errors import Interrupted
    from ..runtime.inpainting.loader import load_pipeline
    from ..runtime.training.recipe import Recipe, run_recipe

    config = config_from_args(args)
    config.check()
    handle = load_pipeline(args.model, device=args.device, dtype="fp32" if args.device == "cpu" else "auto")
    captioner = None
    if args.captioner:
        from ..runtime.captioning.loader import load_captioner

        captioner = load_captioner(args.captioner, device=args.device)
    bars: list = []
    stop = {"asked": False}

    def factory(label: str, total: int):
        bar = tqdm(total=total, desc=label, disable=args.quiet)
        bars.append(bar)

        def progress(done: int, total_: int) -> None:
            bar.total, bar.n = total_, done
            bar.refresh()
            if stop["asked"]:
                raise Interrupted("interrupted by the user")

        return progress

    def on_loss(step: int, loss: float) -> None:
        if bars:
            bars[-1].set_postfix(loss=f"{loss:.4f}", refresh=False)

    def ask_stop(signum, frame) -> None:  # finish the step, save a checkpoint, then stop
        stop["asked"] = True

    in_main = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, ask_stop) if in_main else None
    try:
        recipe = Recipe(args.dataset, args.name, config, dataset_dir=args.dataset_dir, curated=args.curated,
                        stage2_steps=args.stage2_steps, top_k=args.top_k,
                        weighting="score" if args.score_weighted else "uniform", resume=args.resume)
        result = run_recipe(handle, recipe, captioner=captioner, progress_factory=factory, on_loss=on_loss)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous_handler)
        for bar in bars:
            bar.close()
    print(result.summary())
    return 0
