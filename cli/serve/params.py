"""A job's parameters: read from the form, checked against what the server offers and the caller's tier, and
turned into the ``backdrop run`` command line the worker runs.

The worker's ``RunPlan`` is the one ``backdrop run`` builds from that command line (``RunPlan.from_args`` on the
CLI's own parsed defaults; a test holds the two equal), so a job's images are the images ``backdrop run`` writes
for the same photo, seed and settings: same defaults, same checks, same code.
Variation ``k`` of a job is ``backdrop run --seed SEED+k`` (the diffusion path seeds variation k with seed+k itself).

A resolution preset shrinks the photo (long edge, area interpolation, never enlarged; ``runtime.saving``'s
presets) *before* the pipeline, so the product stays pixel-exact to the photo as shrunk and the watermark is
embedded at the delivered size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...runtime.errors import BackdropError
from ...runtime.flags import parse_flag

STUDIO = "studio"  # the weight-free studio backdrop (no checkpoint)
FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # API name -> `backdrop run --format`
FORMAT_ALIASES = {"jpg": "jpeg"}
MAX_SEED = 2**53 - 1  # exact in every JSON client
MAX_SCENE_CHARS = 500
LORA_STRENGTH_RANGE = (-4.0, 4.0)
SINGLE_FIELDS = ("style", "composition", "scene", "variations", "seed", "resolution", "format", "model")
REPEATED_FIELDS = ("lora",)
DEFAULTS = {"style": "Minimal Studio", "composition": "centered", "scene": "", "variations": "1", "seed": "0",
            "resolution": "original", "format": "png", "model": STUDIO}


class ParamError(BackdropError):
    """A parameter cannot be used as given (answered 422). ``limit`` names the tier limit it is over, if any."""

    def __init__(self, message: str, limit: str | None = None, value: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.value = limit, value


VERIFY_FIELDS = ("localise",)


def verify_localise(fields: dict[str, list[str]]) -> bool:
    """``POST /v1/verify``'s one option besides the image: ``localise`` (default false) also maps where the mark
    is and searches windows for a marked region pasted into other material. Any other field is refused."""
    unknown = sorted(set(fields) - set(VERIFY_FIELDS))
    if unknown:
        raise ParamError(f"unknown form field(s) {', '.join(unknown)}; send 'image' and optionally 'localise'")
    values = fields.get("localise", [])
    if len(values) > 1:
        raise ParamError("send 'localise' once")
    flag = parse_flag(values[0]) if values else False
    if flag is None:
        raise ParamError(f"'localise' must be true or false, got {values[0][:40]!r}")
    return flag


def resolution_presets() -> dict[str, tuple[str, int | None]]:
    """API name -> (runtime.saving preset, long edge or None): ``original``, ``4k``, ``2k``, ``web``..."""
    from ...runtime.saving import RESOLUTION_PRESETS

    return {key.split(" ")[0].lower(): (key, edge) for key, edge in RESOLUTION_PRESETS.items()}


@dataclass(frozen=True)
class Catalog:
    """What callers may ask for on this server: styles, compositions, models and LoRAs."""

    styles: tuple[str, ...]
    compositions: tuple[str, ...]
    models: tuple[str, ...]  # "studio", then checkpoints/<file> and diffusers/<folder>
    loras: tuple[str, ...]

    @classmethod
    def load(cls, models_dir: Path | None) -> Catalog:
        from ...runtime.backdrop.styles import load_styles
        from ...runtime.inpainting.loader import SOURCES
        from ...runtime.models import ModelLocator
        from ...runtime.prompting import composition_names

        locator = ModelLocator.from_models_dir(models_dir)
        models = [f"{kind}/{name}" for kind in SOURCES for name in locator.list(kind)]
        return cls(styles=tuple(load_styles()), compositions=tuple(composition_names()), models=(STUDIO, *models),
                   loras=tuple(locator.list("loras")))


@dataclass(frozen=True)
class JobParams:
    style: str
    composition: str
    scene: str
    variations: int
    seed: int
    resolution: str
    format: str
    model: str
    loras: tuple[tuple[str, float], ...] = ()

    # ---- from the request ------------------------------------------------------------------------------
    @classmethod
    def from_form(cls, fields: dict[str, list[str]], catalog: Catalog, max_variations: int) -> JobParams:
        from ...runtime.backdrop.styles import get_style
        from ...runtime.prompting import get_composition

        unknown = sorted(set(fields) - set(SINGLE_FIELDS) - set(REPEATED_FIELDS))
        if unknown:
            raise ParamError(f"unknown form field(s) {', '.join(unknown)}; a job takes photo, "
                             f"{', '.join(SINGLE_FIELDS)} and lora (repeatable)")
        value = {}
        for name in SINGLE_FIELDS:
            given = fields.get(name, [])
            if len(given) > 1:
                raise ParamError(f"{name} is given {len(given)} times; give it once")
            value[name] = given[0].strip() if given and given[0].strip() else DEFAULTS[name]
        try:
            style = get_style(value["style"]).name
            composition = get_composition(value["composition"]).name
        except BackdropError as exc:
            raise ParamError(str(exc)) from None
        scene = fields.get("scene", [""])[0].strip() if fields.get("scene") else ""
        if len(scene) > MAX_SCENE_CHARS or any(ord(c) < 32 and c not in "\t" for c in scene):
            raise ParamError(f"scene must be one line of at most {MAX_SCENE_CHARS} characters")
        variations = _whole(value["variations"], "variations", 1, 64)
        if variations > max_variations:
            raise ParamError(f"{variations} variations asked; this account's tier allows at most {max_variations} "
                             "per job", limit="max_variations", value=max_variations)
        seed = _whole(value["seed"], "seed", 0, MAX_SEED - variations)
        presets = resolution_presets()
        resolution = value["resolution"].lower()
        if resolution not in presets:
            raise ParamError(f"unknown resolution {value['resolution']!r}; use one of {', '.join(presets)}")
        fmt = FORMAT_ALIASES.get(value["format"].lower(), value["format"].lower())
        if fmt not in FORMATS:
            raise ParamError(f"unknown format {value['format']!r}; use png, jpeg or webp")
        model = value["model"]
        if model not in catalog.models:
            raise ParamError(f"unknown model {model!r}; this server offers: {', '.join(catalog.models)} "
                             "(GET /v1/models)")
        loras = tuple(_lora(text, catalog) for text in fields.get("lora", []) if text.strip())
        if loras and model == STUDIO:
            raise ParamError("LoRAs need a diffusion model: choose a model from GET /v1/models, not 'studio'")
        return cls(style=style, composition=composition, scene=scene, variations=variations, seed=seed,
                   resolution=resolution, format=fmt, model=model, loras=loras)

    # ---- stored with the job ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["loras"] = [{"name": name, "strength": strength} for name, strength in self.loras]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobParams:
        values = dict(data)
        values["loras"] = tuple((item["name"], float(item["strength"])) for item in data.get("loras", []))
        return cls(**values)

    def fingerprint(self, upload_sha256: str) -> str:
        """What an Idempotency-Key is bound to: these parameters and the photo's bytes."""
        text = json.dumps({"params": self.to_json(), "photo": upload_sha256}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ---- sizes -----------------------------------------------------------------------------------------
    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the delivered images for a photo of this size (what ``resize_to_preset`` makes)."""
        edge = resolution_presets()[self.resolution][1]
        if edge is None or max(width, height) <= edge:
            return width, height
        scale = edge / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    @property
    def saving_preset(self) -> str:
        return resolution_presets()[self.resolution][0]

    # ---- what the worker runs --------------------------------------------------------------------------
    def run_plan(self, photo: Path, out: Path, *, seed: int, variations: int, account: str, config):
        """The ``RunPlan`` that ``backdrop run`` builds from :meth:`run_argv` with the same arguments.

        ``RunPlan.from_args`` on ``backdrop run``'s own parsed defaults (``config.run_defaults``, handed over by
        cli.main: the worker cannot import the parser, which imports this server) with this job's values set.
        """
        import argparse

        from ...runtime.errors import InvalidInputError
        from ..run_plan import RunPlan

        if not config.run_defaults:
            raise InvalidInputError("the server has no `backdrop run` defaults to build jobs from; start it with "
                                    "`backdrop serve`")
        values = dict(config.run_defaults)
        values.update(inputs=[photo], out=out, style=self.style, format=FORMATS[self.format], seed=seed,
                      composition=self.composition, scene=self.scene, device=config.device,
                      models_dir=config.models_dir, sam=config.sam, captioner=config.captioner, watermark=True,
                      account=account, ledger=config.ledger_location, quiet=True,
                      max_megapixels=config.max_pixels / 1e6)
        if self.model != STUDIO:
            values.update(checkpoint=self.model, variations=variations, dtype=config.dtype,
                          tokenizer_dir=config.tokenizer_dir,
                          lora=[f"{name}:{strength}" for name, strength in self.loras])
        return RunPlan.from_args(argparse.Namespace(**values))

    def run_argv(self, photo: Path, out: Path, *, seed: int, variations: int, account: str, config) -> list[str]:
        """The ``backdrop run`` command line of :meth:`run_plan` (``--opt=value``: a scene starting with '-' stays
        a value). Running it gives the job's images, bar the watermark ID."""
        argv = ["run", str(photo), f"--out={out}", f"--style={self.style}", f"--format={FORMATS[self.format]}",
                f"--seed={seed}", f"--composition={self.composition}", f"--scene={self.scene}",
                f"--device={config.device}", "--watermark", f"--account={account}", "--quiet",
                f"--max-megapixels={config.max_pixels / 1e6}"]
        if config.models_dir is not None:
            argv.append(f"--models-dir={config.models_dir}")
        if config.sam:
            argv.append(f"--sam={config.sam}")
        if config.captioner:
            argv.append(f"--captioner={config.captioner}")
        if self.model != STUDIO:
            argv += [f"--checkpoint={self.model}", f"--variations={variations}", f"--dtype={config.dtype}"]
            if config.tokenizer_dir:
                argv.append(f"--tokenizer-dir={config.tokenizer_dir}")
            argv += [f"--lora={name}:{strength}" for name, strength in self.loras]
        return argv


def _whole(text: str, name: str, low: int, high: int) -> int:
    try:
        number = int(text, 10)
    except ValueError:
        raise ParamError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= number <= high:
        raise ParamError(f"{name} must be {low}..{high}, got {number}")
    return number


def _lora(text: str, catalog: Catalog) -> tuple[str, float]:
    name, sep, strength_text = text.strip().rpartition(":")
    if not sep:
        name, strength_text = text.strip(), "1.0"
    try:
        strength = float(strength_text)
    except ValueError:
        raise ParamError(f"lora {text!r}: the strength after ':' must be a number") from None
    low, high = LORA_STRENGTH_RANGE
    if not math.isfinite(strength) or not low <= strength <= high:
        raise ParamError(f"lora {text!r}: strength must be {low}..{high}")
    if name not in catalog.loras:
        raise ParamError(f"unknown LoRA {name!r}; this server offers: {', '.join(catalog.loras) or 'none'} "
                         "(GET /v1/models)")
    return name, strength
