"""``backdrop run``'s plan: every option parsed and checked once, before any photo is touched, then frozen.

The parsed ``argparse.Namespace`` never travels further than ``RunPlan.from_args``: the code that processes
photos reads the plan, and nothing changes it during the batch.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.backdrop.studio import StudioOptions
from ..runtime.backdrop.styles import StylePreset
from ..runtime.errors import InvalidInputError
from ..runtime.image_gate import ReadLimits
from ..runtime.inpainting.generate import InpaintSettings
from ..runtime.inpainting.memory import DEFAULT_MEMORY, MemoryOptions
from ..runtime.masking.types import Prompt, RefineOptions
from ..runtime.watermark.codec import DEFAULT_VERSION

if TYPE_CHECKING:
    from ..export.engine_export import EngineRequest


@dataclass(frozen=True)
class InpaintPlan:
    """The diffusion path (``--checkpoint``): which model and LoRAs, and the sampling settings."""

    checkpoint: str
    loras: tuple[tuple[str, float], ...]
    fuse_loras: bool
    dtype: str
    tokenizer_dir: str | None
    prompt: str | None  # None: composed from the captions and the style
    negative: str | None
    settings: InpaintSettings  # its prompts are filled in per photo
    engine: str | None = None  # --engine: "<kind>/<file>" or "auto"
    engine_components: bool = False
    engine_threads: int = 0
    engine_memory: float | None = None  # --engine-memory in bytes (None: what the machine has available)
    models_dir: Path | None = None  # where --engine auto finds engine_choice.json
    candidates: int = 0  # --candidates K: generate K, rank, keep ``keep_best`` (0: no ranking)
    keep_best: int = 1
    upscale: str | None = None  # --upscale: "lanczos" or a file in models/upscale_models
    upscale_to: str = "original"
    text_encoders: tuple[str, ...] = ()  # --text-encoders: FLUX single files' CLIP-L / T5 (empty: the fitting ones)
    vae: str | None = None  # --vae: FLUX single files' autoencoder in models/vae
    t5_tokenizer_dir: str | None = None
    memory: MemoryOptions = DEFAULT_MEMORY  # --offload, --text-encoder-quant
    aesthetic: str | None = None  # --aesthetic: a predictor in models/aesthetic (ranking candidates)
    clip_vision: str | None = None  # --clip-vision: its encoder in models/clip_vision (None: the one that fits)

    @property
    def pictures(self) -> int:
        """How many pictures each photo gives: the best ``keep_best`` of the candidates, or every variation."""
        return self.keep_best if self.candidates else self.settings.variations

    def load_pipeline(self, device: str):
        """The pipeline of ``--checkpoint`` with its LoRA stack (from the models folders), on ``--engine``."""
        from ..runtime.inpainting.loader import load_pipeline
        from ..runtime.inpainting.loras import add_lora

        dtype = self.dtype
        choice = self._engine_choice()
        if choice is not None and choice.request(None) is None and dtype == "auto":
            dtype = choice.precision if choice.precision in ("fp32", "bf16") else dtype  # torch won the bench
        handle = load_pipeline(self.checkpoint, device=device, dtype=dtype, tokenizer_dir=self.tokenizer_dir,
                               text_encoders=self.text_encoders, vae=self.vae,
                               t5_tokenizer_dir=self.t5_tokenizer_dir, memory=self.memory)
        for name, strength in self.loras:
            handle = add_lora(handle, name, strength, fuse=self.fuse_loras)
        return self._attach_engine(handle, choice)

    def _engine_choice(self):
        if self.engine != "auto":
            return None
        from ..export.engine_choice import default_choice_path, read_choice

        choice = read_choice(default_choice_path(self.models_dir))
        choice.check_cpu()
        return choice

    def _attach_engine(self, handle, choice):
        """``handle`` on the engine named by --engine (exported first for 'auto', unless cached)."""
        if not self.engine:
            return handle
        from ..runtime.inpainting.loader import require_unet

        if not handle.is_flux:  # FLUX transformers run on ONNX / OpenVINO engines too
            require_unet(handle, "--engine")
        from ..export.attach import attach_engine
        from ..runtime.models import get_locator

        locator = get_locator()
        threads = self.engine_threads or None
        if choice is not None and choice.frozen_compile and not handle.is_flux:  # measured on SD UNets only
            from ..export.attach import attach_frozen_compile

            return attach_frozen_compile(handle)
        if choice is None:
            kind, _, name = self.engine.partition("/")
            return attach_engine(handle, locator.resolve(kind, name), threads=threads,
                                 components=self.engine_components, locator=locator, memory_limit=self.engine_memory)
        if handle.is_flux:
            return self._attach_flux_auto(handle, choice, locator, threads)
        from ..runtime.engines.profile import ShapeProfile
        from ..runtime.engines.spec import UNetSpec
        from ..runtime.inpainting.geometry import FAMILY_RESOLUTION

        side = self.settings.resolution or FAMILY_RESOLUTION[handle.family]
        multiple = UNetSpec.from_unet(handle.pipe.unet).latent_multiple
        side = max(multiple * 8, side // (multiple * 8) * multiple * 8)
        request = choice.request(ShapeProfile.from_resolutions([(side, side)], batch=2 * self.settings.variations,
                                                               latent_multiple=multiple))
        if request is None:
            return handle  # plain torch was the fastest within the budget
        return self._auto_engine(handle, request, locator, threads,
                                 self.engine_components and request.format == "openvino")

    def _attach_flux_auto(self, handle, choice, locator, threads):
        """--engine auto for a FLUX pipeline: the chosen kind of engine for its transformer (an onnxruntime
        choice becomes the portable fp32 export: the optimised graphs are UNet-only), exported unless cached."""
        request = choice.request(None)
        if request is None:
            return handle  # plain torch was the fastest within the budget
        return self._auto_engine(handle, flux_engine_request(request), locator, threads)

    def _auto_engine(self, handle, request, locator, threads, components: bool = False):
        """``handle`` on --engine auto's engine (exported unless cached), or on torch, with a note, where the export
        or the engine would not fit in memory: the run goes on rather than being ended by the out-of-memory killer."""
        from ..export.attach import attach_engine
        from ..export.engine_export import export_pipeline_engine
        from ..runtime.errors import InsufficientMemoryError
        from .progress_bars import tqdm_progress

        progress, close = tqdm_progress("engine export", 1, disable=not sys.stderr.isatty(), unit="step")
        try:
            result = export_pipeline_engine(handle, request, locator, components=components,
                                            memory_limit=self.engine_memory, progress=progress)
            return attach_engine(handle, result.path, threads=threads, components=components, locator=locator,
                                 memory_limit=self.engine_memory)
        except InsufficientMemoryError as exc:
            print(f"backdrop run: note: --engine auto runs on torch: {exc}", file=sys.stderr)
            return handle
        finally:
            close()

    def settings_for(self, positive: str, negative: str) -> InpaintSettings:
        """The sampling settings with this photo's prompts (explicit --prompt/--negative win)."""
        return replace(self.settings, prompt=self.prompt or positive, negative_prompt=self.negative or negative)


@dataclass(frozen=True)
class WatermarkPlan:
    """``--watermark``: who the records name, whether files carry a C2PA manifest, and the codec version."""

    account: str
    c2pa: bool
    ledger: str | None = None  # --ledger: a postgresql:// URL or an SQLite file; None: the home's ledger
    version: int = DEFAULT_VERSION  # --watermark-codec


@dataclass(frozen=True)
class RunPlan:
    """Everything ``backdrop run`` does to each photo, decided before the first one."""

    inputs: tuple[Path, ...]
    out: Path
    format: str
    models_dir: Path | None
    device: str
    style: StylePreset
    mask_prompt: Prompt
    refine: RefineOptions
    studio: StudioOptions
    seed: int
    sam: str | None
    captioner: str | None
    composition: str
    scene: str
    save_mask: bool
    prompt_json: bool
    inpaint: InpaintPlan | None
    watermark: WatermarkPlan | None
    quiet: bool
    read_limits: ReadLimits

    @property
    def style_slug(self) -> str:
        return self.style.name.lower().replace(" ", "-")

    @property
    def needs_prompt(self) -> bool:
        """Captions and a composed prompt are needed: for diffusion, or to write the prompt JSON."""
        return self.inpaint is not None or self.prompt_json

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunPlan:
        """Parse and check every option (unknown style or composition, bad box, LoRA strengths...)."""
        from ..runtime.backdrop.styles import get_style
        from ..runtime.devices import resolve_device
        from ..runtime.masking.types import parse_box, parse_points
        from ..runtime.prompting import get_composition
        from .inputs import collect_inputs

        # captions are always recorded with a VLM, and candidate scores in the same JSON
        prompt_json = bool(args.prompt_json or args.captioner or getattr(args, "candidates", 0))
        if prompt_json:
            get_composition(args.composition)  # fail before the batch on a bad name
        inputs = tuple(collect_inputs(args.inputs))
        if not inputs:
            raise InvalidInputError("no input images found")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"--out {out} is a file; give a folder (it is created when missing)")
        return cls(
            inputs=inputs, out=out, format=args.format, models_dir=args.models_dir,
            device=resolve_device(args.device), style=get_style(args.style),
            mask_prompt=Prompt(box=parse_box(args.box), points=parse_points(args.points)),
            refine=RefineOptions(fill_holes=not args.no_fill_holes, keep=args.keep, grow_px=args.grow,
                                 edge_refine=not args.no_edge_refine, feather_px=args.feather),
            studio=StudioOptions(shadow=args.shadow, vignette=args.vignette, light=args.light, seed=args.seed),
            seed=args.seed, sam=args.sam, captioner=args.captioner, composition=args.composition, scene=args.scene,
            save_mask=args.save_mask, prompt_json=prompt_json, inpaint=_inpaint_plan(args),
            watermark=_watermark_plan(args),
            quiet=args.quiet, read_limits=_read_limits(args.max_megapixels))


def flux_engine_request(request: EngineRequest) -> EngineRequest:
    """A bench choice's export request as a FLUX transformer takes it: onnxruntime's CPU-optimised graphs are
    UNet-only (the portable fp32 export instead), and w8a8 is calibrated for UNets (int8 weights instead)."""
    if request.format == "onnx":
        return replace(request, optimize_for="", precision="fp32")
    if request.precision == "w8a8":
        return replace(request, precision="int8")
    return request


def _watermark_plan(args: argparse.Namespace) -> WatermarkPlan | None:
    """--watermark and its options; --ledger is checked before any photo (a bad URL fails here, naming host and
    database, never a password)."""
    from ..runtime.provenance.ledger_backends import check_location

    location = getattr(args, "ledger", None)
    codec = getattr(args, "watermark_codec", None)
    if not args.watermark:
        if location is not None:
            raise InvalidInputError("--ledger needs --watermark: only watermarked outputs are recorded")
        if codec is not None:
            raise InvalidInputError("--watermark-codec needs --watermark: it picks the codec of the mark")
        return None
    return WatermarkPlan(account=args.account or getpass.getuser(), c2pa=not args.no_c2pa,
                         ledger=None if location is None else check_location(location),
                         version=DEFAULT_VERSION if codec is None else int(codec))


def _inpaint_plan(args: argparse.Namespace) -> InpaintPlan | None:
    from .inpaint_options import parse_lora

    if not args.checkpoint:
        if getattr(args, "candidates", 0) or getattr(args, "upscale", None) or getattr(args, "keep_best", None):
            raise InvalidInputError("--candidates, --keep-best and --upscale work on the diffusion path: give "
                                    "--checkpoint (the studio backdrop is drawn at full size, one per photo)")
        return None
    from ..runtime.inpainting.loader import default_cfg

    candidates, keep_best, upscale = _candidates_and_upscale(args)
    cfg = default_cfg(args.checkpoint) if args.cfg is None else args.cfg
    settings = InpaintSettings(prompt="", seed=args.seed, steps=args.steps, cfg=cfg, scheduler=args.scheduler,
                               strength=args.strength, variations=candidates or args.variations,
                               resolution=args.resolution,
                               outpaint=args.outpaint, seam_feather=args.seam_feather, color_match=args.color_match,
                               feature_cache=args.feature_cache)
    settings.validate()
    return InpaintPlan(checkpoint=args.checkpoint, loras=tuple(parse_lora(text) for text in args.lora),
                       fuse_loras=args.fuse_loras, dtype=args.dtype, tokenizer_dir=args.tokenizer_dir,
                       prompt=args.prompt, negative=args.negative, settings=settings,
                       engine=_engine_name(args.engine, args.engine_components),
                       engine_components=args.engine_components,
                       engine_threads=args.engine_threads,
                       engine_memory=_engine_memory(getattr(args, "engine_memory", None), args.engine),
                       models_dir=args.models_dir, candidates=candidates,
                       keep_best=keep_best, upscale=upscale, upscale_to=getattr(args, "upscale_to", "original"),
                       text_encoders=tuple(n.strip() for n in (getattr(args, "text_encoders", None) or "").split(",")
                                           if n.strip()),
                       vae=getattr(args, "vae", None), t5_tokenizer_dir=getattr(args, "t5_tokenizer_dir", None),
                       memory=MemoryOptions(getattr(args, "offload", "none"),
                                            getattr(args, "text_encoder_quant", "none")),
                       aesthetic=_aesthetic_predictor(args, candidates), clip_vision=getattr(args, "clip_vision", None))


def _candidates_and_upscale(args: argparse.Namespace) -> tuple[int, int, str | None]:
    """--candidates K, --keep-best N and --upscale, checked before any photo."""
    candidates, keep_best = getattr(args, "candidates", 0), getattr(args, "keep_best", None)
    if candidates:
        if not 2 <= candidates <= 64:
            raise InvalidInputError(f"--candidates must be 2..64 (0 = off), got {candidates}")
        if args.variations != 1:
            raise InvalidInputError("--candidates K replaces --variations: K backgrounds are generated and the best "
                                    "--keep-best are written")
        keep_best = 1 if keep_best is None else keep_best
        if not 1 <= keep_best <= candidates:
            raise InvalidInputError(f"--keep-best must be 1..{candidates} (the --candidates), got {keep_best}")
    elif keep_best is not None:
        raise InvalidInputError("--keep-best needs --candidates K")
    upscale = getattr(args, "upscale", None)
    if upscale is not None and upscale != "lanczos":
        from ..runtime.models import get_locator

        get_locator().resolve("upscale_models", upscale)  # a missing model names the folder, before any photo
    return candidates, keep_best or 1, upscale


def _aesthetic_predictor(args: argparse.Namespace, candidates: int) -> str | None:
    """--aesthetic checked before any photo: the predictor file in models/aesthetic that ranks candidates, or None."""
    from ..runtime.models import get_locator

    choice = getattr(args, "aesthetic", "auto")
    if not candidates:
        if choice not in ("auto", "none") or getattr(args, "clip_vision", None):
            raise InvalidInputError("--aesthetic and --clip-vision rank candidates: give --candidates K")
        return None
    if choice == "none":
        return None
    locator = get_locator()
    if choice != "auto":
        locator.resolve("aesthetic", choice)  # a missing file names the folder, before any photo
        return choice
    found = locator.list("aesthetic")
    if len(found) > 1:
        raise InvalidInputError(f"several aesthetic predictors in models/aesthetic ({', '.join(found)}): name one "
                                "with --aesthetic, or --aesthetic none")
    return found[0] if found else None


def _engine_name(engine: str | None, components: bool) -> str | None:
    """--engine checked before any photo: 'auto' or '<kind>/<file>' of an engine folder."""
    if engine is None:
        if components:
            raise InvalidInputError("--engine-components needs --engine (an OpenVINO engine, or auto)")
        return None
    kind, _, name = engine.partition("/")
    if engine != "auto" and (kind not in ("onnx", "tensorrt", "openvino") or not name):
        raise InvalidInputError(f"--engine {engine!r}: give openvino/<file>.xml, onnx/<file>.onnx, "
                                "tensorrt/<file>.engine (names from the models folders) or auto")
    if components and kind not in ("openvino", "auto"):
        raise InvalidInputError("--engine-components runs the text encoders and VAE on OpenVINO engines: give an "
                                "openvino/<file>.xml engine or auto")
    return engine


def _engine_memory(gib: float | None, engine: str | None) -> float | None:
    """--engine-memory checked before any photo, in bytes."""
    if gib is None:
        return None
    if engine is None:
        raise InvalidInputError("--engine-memory limits what --engine exports and loads: give --engine")
    if not gib > 0:
        raise InvalidInputError(f"--engine-memory must be a positive number of GiB, got {gib}")
    return gib * 2**30


def _read_limits(max_megapixels: float | None) -> ReadLimits:
    """The input gate's limits for this run: ``--max-megapixels`` raises (or lowers) the pixel limit, and the
    refusal names the flag."""
    from ..runtime.image_gate import DEFAULT_READ_LIMITS

    hint = "raise the limit with --max-megapixels N"
    if max_megapixels is None:
        return ReadLimits(how_to_raise=hint)
    if not 0 < max_megapixels <= 1000:
        raise InvalidInputError(f"--max-megapixels must be in (0, 1000], got {max_megapixels}")
    pixels = int(max_megapixels * 1e6)  # sides stay within what the runtime accepts (max_side)
    return ReadLimits(max_pixels=pixels, max_bytes=max(DEFAULT_READ_LIMITS.max_bytes, 8 * pixels + (1 << 20)),
                      how_to_raise=hint)
