"""The weight-free studio backdrop: a seamless paper sweep in a style's palette, a soft key light,
a gentle vignette and a contact shadow derived from the product mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .styles import StylePreset


@dataclass(frozen=True)
class StudioOptions:
    """Overrides for a style's look; ``None`` keeps the style's own value (each 0..1)."""

    shadow: float | None = None
    vignette: float | None = None
    light: float | None = None
    seed: int = 0

    def resolved(self, style: StylePreset) -> tuple[float, float, float]:
        values = (
            style.look.shadow if self.shadow is None else self.shadow,
            style.look.vignette if self.vignette is None else self.vignette,
            style.look.light if self.light is None else self.light,
        )
        if not all(0.0 <= v <= 1.0 for v in values):
            raise InvalidInputError(f"shadow, vignette and light must be within 0..1, got {values}")
        return values


@dataclass(frozen=True)
class ProductFrame:
    """Where the product sits: bounding box, base line and width, in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def center_x(self) -> float:
        return (self.x0 + self.x1) / 2.0


def product_frame(alpha: np.ndarray | None, threshold: float = 0.5) -> ProductFrame | None:
    """Bounding box of ``alpha > threshold``, or None for an empty mask."""
    if alpha is None:
        return None
    ys, xs = np.nonzero(alpha > threshold)
    if ys.size == 0:
        return None
    return ProductFrame(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def horizon_row(height: int, frame: ProductFrame | None) -> float:
    """Where the wall meets the floor: a little above the product's base so it stands on the floor."""
    if frame is None:
        return 0.68 * height
    return float(np.clip(frame.y1 - 0.18 * frame.height, 0.3 * height, 0.88 * height))


def render_studio_backdrop(height: int, width: int, style: StylePreset, product_alpha: np.ndarray | None = None,
                           options: StudioOptions | None = None) -> np.ndarray:
    """A float32 [H,W,3] studio backdrop in ``style``'s palette, lit and shadowed for the product."""
    if height < 1 or width < 1:
        raise InvalidInputError(f"backdrop size must be positive, got {width}x{height}")
    if product_alpha is not None and product_alpha.shape != (height, width):
        raise InvalidInputError(f"product mask is {product_alpha.shape}, backdrop is {(height, width)}")
    shadow, vignette, light = (options or StudioOptions()).resolved(style)
    frame = product_frame(product_alpha)
    horizon = horizon_row(height, frame)

    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    wall = np.asarray(style.palette["wall"], np.float32)
    floor = np.asarray(style.palette["floor"], np.float32)

    # Paper sweep: the wall brightens upward, the floor deepens toward the camera, a smooth curve between.
    wall_shade = 1.0 + 0.06 * (1.0 - np.clip(ys / max(horizon, 1.0), 0.0, 1.0))
    floor_shade = 1.0 - 0.05 * np.clip((ys - horizon) / max(height - horizon, 1.0), 0.0, 1.0)
    band = 0.09 * height
    t = _smoothstep(np.clip((ys - (horizon - band)) / (1.6 * band), 0.0, 1.0))
    image = (1.0 - t)[..., None] * wall * wall_shade[..., None] + t[..., None] * floor * floor_shade[..., None]
    image = np.broadcast_to(image, (height, width, 3)).astype(np.float32)

    # Soft key light centred over the product, then the vignette.
    cx = frame.center_x if frame else width / 2.0
    cy = (frame.y0 + frame.height * 0.3) if frame else horizon * 0.6
    diag = float(np.hypot(height, width))
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (0.55 * diag) ** 2
    image = image * (1.0 + 0.10 * light * np.exp(-r2))[..., None]
    rv2 = ((xs - width / 2.0) ** 2 / (0.5 * width) ** 2 + (ys - height / 2.0) ** 2 / (0.5 * height) ** 2) / 2.0
    image = image * (1.0 - 0.45 * vignette * _smoothstep(np.clip(rv2, 0.0, 1.0)))[..., None]

    if frame is not None and shadow > 0:
        image = image * contact_shadow(product_alpha, frame, shadow)[..., None]

    # Fine dither so 8-bit output shows no banding on smooth gradients (seeded: deterministic).
    rng = np.random.default_rng(options.seed if options else 0)
    image = image + rng.uniform(-0.5 / 255, 0.5 / 255, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def contact_shadow(alpha: np.ndarray, frame: ProductFrame, strength: float) -> np.ndarray:
    """Multiplicative shadow [H,W] in (0,1]: a soft ground shadow plus a tight contact occlusion.

    Both come from the product's own footprint: the mask squashed flat onto its base line.
    """
    import cv2

    h, w = alpha.shape
    base = frame.y1
    soft_sigma = max(1.0, 0.07 * frame.width)
    tight_sigma = max(0.6, 0.012 * max(frame.width, frame.height))

    # Footprint: the silhouette flattened onto the base line (an ellipse-like pool under the product).
    squash = 0.10
    matrix = np.float32([[1.0, 0.0, 0.0], [0.0, squash, base * (1.0 - squash)]])
    footprint = cv2.warpAffine((alpha > 0.5).astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    soft = cv2.GaussianBlur(footprint, (0, 0), soft_sigma)
    soft = soft / max(float(soft.max()), 1e-6)

    # Contact: only the lowest few percent of the silhouette, blurred a little and nudged down.
    rows = np.arange(h)[:, None]
    contact_band = (alpha > 0.5) & (rows >= base - max(2, int(0.04 * frame.height)))
    shift = max(1, round(tight_sigma))
    contact = np.zeros((h, w), np.float32)
    contact[shift:] = contact_band[:-shift] if shift < h else 0
    contact = cv2.GaussianBlur(contact, (0, 0), tight_sigma)
    contact = contact / max(float(contact.max()), 1e-6)

    darkness = strength * np.clip(0.45 * soft + 0.55 * contact, 0.0, 1.0)
    return (1.0 - 0.85 * darkness).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)
