"""Which files make up a FLUX pipeline in ComfyUI's model folders, chosen before anything is loaded.

The transformer is named by the user (``diffusion_models/<file>``, legacy ``unet/<file>``, or an
all-in-one ``checkpoints/<file>``). CLIP-L and T5-XXL come from ``models/text_encoders`` (legacy
``models/clip``) and the autoencoder from ``models/vae``: the names given, else what an all-in-one
checkpoint holds, else the one file in those folders that fits the transformer (CLIP's width equals the
transformer's pooled projection, T5's its text width, the VAE's latent channels its output). Only
safetensors headers are read here; the weights load later, once, in ``flux_single_file``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError, InvalidModelError, MissingModelError
from ..models import get_locator
from . import flux_probe as probe

TRANSFORMER_KINDS = ("diffusion_models", "unet")
TEXT_ENCODER_KINDS = ("text_encoders", "clip")
VAE_KINDS = ("vae",)
EXAMPLES = {"clip_l": "clip_l.safetensors", "t5": "t5xxl_fp16.safetensors", "vae": "ae.safetensors"}
LABELS = {"clip_l": "CLIP-L text encoder", "t5": "T5-XXL text encoder", "vae": "FLUX autoencoder"}


@dataclass(frozen=True)
class Component:
    """One part of the pipeline: a file in a model folder, or a prefix inside an all-in-one checkpoint."""

    kind: str  # the model folder: diffusion_models, unet, checkpoints, text_encoders, clip, vae
    name: str
    path: Path
    prefix: str = ""

    @property
    def label(self) -> str:
        inside = f" ({self.prefix}*)" if self.prefix else ""
        return f"{self.kind}/{self.name}{inside}"


@dataclass(frozen=True)
class FluxFiles:
    """The four parts of a FLUX.1 Fill / Kontext pipeline, and the transformer's config and family."""

    transformer: Component
    clip_l: Component
    t5: Component
    vae: Component
    family: str
    config: dict

    @property
    def paths(self) -> list[Path]:
        """Every distinct file, in a stable order (for fingerprints and cache keys)."""
        seen: list[Path] = []
        for part in (self.transformer, self.clip_l, self.t5, self.vae):
            if part.path not in seen:
                seen.append(part.path)
        return seen


def flux_files(kind: str, name: str, path: Path, text_encoders: Sequence[str] = (),
               vae: str | None = None) -> FluxFiles:
    """Choose every part for the transformer ``kind/name`` (at ``path``); errors name folders and candidates."""
    shapes = probe.safetensors_shapes(path)
    checkpoint = kind == "checkpoints"
    config = _transformer_config(kind, name, shapes)
    family = probe.family_for(config, name)
    transformer = Component(kind, name, path, probe.BFL_PREFIX if checkpoint else "")
    needs = {"clip_l": config["pooled_projection_dim"], "t5": config["joint_attention_dim"],
             "vae": config["out_channels"] // 4}
    chosen: dict[str, Component] = {}
    for text_name in text_encoders:
        part, part_kind = _explicit(text_name, TEXT_ENCODER_KINDS, ("clip_l", "t5"))
        if part_kind in chosen:
            raise InvalidInputError(f"two {LABELS[part_kind]}s were given ({chosen[part_kind].name} and "
                                    f"{part.name}); give one CLIP-L and one T5-XXL")
        chosen[part_kind] = part
    if vae:
        chosen["vae"], _ = _explicit(vae, VAE_KINDS, ("vae",))
    for part_kind in ("clip_l", "t5", "vae"):
        if part_kind in chosen:
            _check_fits(chosen[part_kind], part_kind, needs[part_kind], name)
        elif checkpoint and probe.sub_shapes(shapes, probe.CHECKPOINT_PREFIXES[part_kind]):
            chosen[part_kind] = Component(kind, name, path, probe.CHECKPOINT_PREFIXES[part_kind])
        else:
            chosen[part_kind] = _pick(part_kind, needs[part_kind], name)
    return FluxFiles(transformer=transformer, family=family, config=config, **chosen)


def transformer_family(kind: str, name: str, path: Path) -> str:
    """``flux-fill`` or ``flux-kontext`` for the transformer file ``kind/name`` (header only)."""
    return probe.family_for(_transformer_config(kind, name, probe.safetensors_shapes(path)), name)


def _transformer_config(kind: str, name: str, shapes: probe.Shapes) -> dict:
    inner = probe.sub_shapes(shapes, probe.BFL_PREFIX) if kind == "checkpoints" \
        else probe.strip_transformer_prefix(shapes)
    return probe.transformer_config(inner, f"{kind}/{name}")


def _explicit(text: str, kinds: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[Component, str]:
    """A name from a folder listing (optionally ``<kind>/`` prefixed), classified by its tensor names."""
    locator = get_locator()
    prefix, _, rest = text.partition("/")
    search = [(prefix, rest)] if prefix in kinds and rest else [(k, text) for k in kinds]
    for kind, name in search:
        if name in locator.list(kind):
            path = locator.resolve(kind, name)
            part_kind = probe.component_kind(probe.safetensors_shapes(path))
            if part_kind not in allowed:
                what = " or ".join(LABELS[a] for a in allowed)
                raise InvalidModelError(f"{kind}/{name} is not a {what} (its tensor names do not match "
                                        f"one); expected e.g. {', '.join(EXAMPLES[a] for a in allowed)}")
            return Component(kind, name, path), part_kind
    locator.resolve(search[0][0], search[0][1])  # raises the missing-model message naming the folder
    raise AssertionError("unreachable")


def _fits(part: Component, part_kind: str, need: int) -> bool:
    shapes = probe.sub_shapes(probe.safetensors_shapes(part.path), part.prefix)
    if part_kind == "clip_l":
        return probe.clip_config(probe.clip_shapes(shapes), part.label)["hidden_size"] == need
    if part_kind == "t5":
        return probe.t5_config(shapes, part.label)["d_model"] == need
    return probe.vae_config(shapes, part.label)["latent_channels"] == need


def _check_fits(part: Component, part_kind: str, need: int, transformer: str) -> None:
    if not _fits(part, part_kind, need):
        raise InvalidModelError(f"{part.label} does not fit {transformer}: the transformer expects a "
                                f"{LABELS[part_kind]} of width {need}")


def _candidates(part_kind: str) -> list[Component]:
    """The files in the folders whose tensor names make them ``part_kind`` (headers only)."""
    locator = get_locator()
    found: list[Component] = []
    seen: set[Path] = set()
    for kind in (VAE_KINDS if part_kind == "vae" else TEXT_ENCODER_KINDS):
        for name in locator.list(kind):
            path = locator.resolve(kind, name)
            if path.resolve() in seen:
                continue  # ComfyUI maps models/clip into text_encoders: the same file under two names
            seen.add(path.resolve())
            try:
                if probe.component_kind(probe.safetensors_shapes(path)) == part_kind:
                    found.append(Component(kind, name, path))
            except InvalidModelError:
                continue  # unreadable files are not candidates; naming one explicitly reports it
    return found


def _pick(part_kind: str, need: int, transformer: str) -> Component:
    found = _candidates(part_kind)
    fitting = [c for c in found if _fits_quietly(c, part_kind, need)]
    folders = _folders(part_kind)
    option = "--vae" if part_kind == "vae" else "--text-encoders"
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        others = f" ({', '.join(c.label for c in found)} do not fit it)" if found else ""
        raise MissingModelError(
            f"{transformer} needs a {LABELS[part_kind]}, and none was found in {folders}{others}. Put one "
            f"there, for example models/{'vae' if part_kind == 'vae' else 'text_encoders'}/{EXAMPLES[part_kind]} "
            "(.safetensors; ComfyUI's FLUX files work as they are). Nothing is downloaded.")
    names = "\n".join(f"  - {c.label}" for c in fitting)
    raise InvalidInputError(
        f"{transformer}: several {LABELS[part_kind]}s in {folders} fit, so none was picked:\n{names}\n"
        f"Name one: {option} on the command line, or the matching widget of Backdrop Inpaint Loader.")


def _fits_quietly(part: Component, part_kind: str, need: int) -> bool:
    try:
        return _fits(part, part_kind, need)
    except InvalidModelError:
        return False


def _folders(part_kind: str) -> str:
    locator = get_locator()
    kinds = VAE_KINDS if part_kind == "vae" else TEXT_ENCODER_KINDS
    paths: list[str] = []
    for kind in kinds:
        for folder in locator.folders(kind):
            if str(folder) not in paths:
                paths.append(str(folder))
    return ", ".join(f"models/{k}" for k in kinds) + f" ({', '.join(paths)})"
