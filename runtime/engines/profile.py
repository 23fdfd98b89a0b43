"""Shape profiles: the batch, latent size and token ranges an engine was built for.

Sizes are kept in latent units (pixels / VAE scale) because that is what the UNet sees; messages
show both, since people choose resolutions in pixels. A batch larger than the profile is split into
chunks; a chunk smaller than the profile's minimum is padded by repeating its last row. A latent
size or token count outside the profile is an ``OutOfProfileError`` that names the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from .spec import CONTEXT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec

VAE_SCALE = 8
Range = tuple[int, int, int]  # (min, opt, max)


class OutOfProfileError(InvalidInputError):
    """A shape the engine was not built for."""


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max of the UNet batch, latent height, latent width and text tokens."""

    batch: Range
    height: Range
    width: Range
    tokens: Range = (77, 77, 77)
    vae_scale: int = VAE_SCALE

    def __post_init__(self) -> None:
        for label, (lo, opt, hi) in (("batch", self.batch), ("height", self.height), ("width", self.width),
                                     ("tokens", self.tokens)):
            if not 1 <= lo <= opt <= hi:
                raise InvalidInputError(f"profile {label} must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")

    @classmethod
    def from_resolutions(cls, resolutions: Sequence[tuple[int, int]], batch: Range | int = (1, 1, 1),
                         tokens: Range | int = 77, latent_multiple: int = 8,
                         vae_scale: int = VAE_SCALE) -> ShapeProfile:
        """A profile covering ``resolutions`` ((width, height) in pixels); the first one is the optimum.

        ``batch`` is the UNet batch (images x 2 with classifier-free guidance): an int n means 1..n, opt n.
        """
        if not resolutions:
            raise InvalidInputError("give at least one resolution (width, height) for the engine profile")
        step = latent_multiple * vae_scale
        for w, h in resolutions:
            if w <= 0 or h <= 0 or w % step or h % step:
                raise InvalidInputError(f"resolution {w}x{h} is not usable: width and height must be positive "
                                        f"multiples of {step} px for this UNet")
        widths = [w // vae_scale for w, _ in resolutions]
        heights = [h // vae_scale for _, h in resolutions]
        batch_range = (1, batch, batch) if isinstance(batch, int) else tuple(batch)
        token_range = (tokens, tokens, tokens) if isinstance(tokens, int) else tuple(tokens)
        return cls(batch=batch_range, height=(min(heights), heights[0], max(heights)),
                   width=(min(widths), widths[0], max(widths)), tokens=token_range, vae_scale=vae_scale)

    def describe(self) -> str:
        s = self.vae_scale
        (hl, ho, hh), (wl, wo, wh) = self.height, self.width

        def span(lo: int, hi: int, scale: int = 1) -> str:
            return f"{lo * scale}" if lo == hi else f"{lo * scale}..{hi * scale}"

        return (f"batch {span(self.batch[0], self.batch[2])} (opt {self.batch[1]}), "
                f"image width {span(wl, wh, s)} x height {span(hl, hh, s)} px "
                f"(latent {span(wl, wh)} x {span(hl, hh)}, opt {wo * s}x{ho * s} px), "
                f"{span(self.tokens[0], self.tokens[2])} text tokens")

    def check(self, height: int, width: int, tokens: int) -> None:
        """Raise ``OutOfProfileError`` unless the latent size and token count are inside the profile."""
        problems = []
        if not self.height[0] <= height <= self.height[2]:
            problems.append(f"latent height {height} ({height * self.vae_scale} px)")
        if not self.width[0] <= width <= self.width[2]:
            problems.append(f"latent width {width} ({width * self.vae_scale} px)")
        if not self.tokens[0] <= tokens <= self.tokens[2]:
            problems.append(f"{tokens} text tokens")
        if problems:
            raise OutOfProfileError(
                f"{' and '.join(problems)} is outside the engine's profile: {self.describe()}. "
                "Export an engine whose resolutions cover this size (BackdropExportEngine), "
                "or use the torch UNet for it.")

    def batch_chunks(self, batch: int) -> list[tuple[int, int, int]]:
        """Split a batch into (start, stop, pad) chunks of at most max batch; pad rows lift a chunk to min."""
        lo, _, hi = self.batch
        chunks = []
        for start in range(0, batch, hi):
            stop = min(start + hi, batch)
            chunks.append((start, stop, max(0, lo - (stop - start))))
        return chunks

    def input_shapes(self, spec: UNetSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape per engine input, for a TensorRT optimization profile."""
        shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in spec.input_names}
        for i in range(3):
            b, h, w, t = self.batch[i], self.height[i], self.width[i], self.tokens[i]
            shapes[SAMPLE].append((b, spec.in_channels, h, w))
            shapes[TIMESTEP].append((b,))
            shapes[CONTEXT].append((b, t, spec.context_dim))
            if spec.is_sdxl:
                shapes[TEXT_EMBEDS].append((b, spec.text_embeds_dim))
                shapes[TIME_IDS].append((b, spec.time_ids_dim))
        return {name: (v[0], v[1], v[2]) for name, v in shapes.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "height": list(self.height), "width": list(self.width),
                "tokens": list(self.tokens), "vae_scale": self.vae_scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeProfile:
        return cls(batch=_range(data["batch"]), height=_range(data["height"]), width=_range(data["width"]),
                   tokens=_range(data.get("tokens", (77, 77, 77))), vae_scale=int(data.get("vae_scale", VAE_SCALE)))


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """``"512x512, 768x512"`` -> [(512, 512), (768, 512)] as (width, height)."""
    sizes = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower().replace(" ", "")
        if not part:
            continue
        width, sep, height = part.partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise InvalidInputError(f"resolution {part!r} is not WIDTHxHEIGHT (for example 768x512)")
        sizes.append((int(width), int(height)))
    if not sizes:
        raise InvalidInputError("give at least one resolution, for example 512x512")
    return sizes


def _range(values: Sequence[int]) -> Range:
    lo, opt, hi = (int(v) for v in values)
    return lo, opt, hi
