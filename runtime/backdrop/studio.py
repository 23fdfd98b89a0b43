"""The weight-free studio backdrop: a seamless paper sweep in a style's palette, a soft key light,
a gentle vignette and a contact shadow derived from the product mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .styles import StylePreset

DITHER_BLOCK = 1 << 20  # values (rows x width x 3) rendered at a time: 4 MB blocks stay in cache
SHADOW_MIN_SIGMA = 4.0  # the contact blur keeps at least this many pixels of sigma on the reduced grid
SHADOW_REACH = 4.0  # the shadow is computed within this many blur sigmas of the product's footprint


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
    inside = alpha > threshold
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(inside[rows[0]:rows[-1] + 1].any(axis=0))
    return ProductFrame(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def horizon_row(height: int, frame: ProductFrame | None) -> float:
    """Where the wall meets the floor: a little above the product's base so it stands on the floor."""
    if frame is None:
        return 0.68 * height
    return float(np.clip(frame.y1 - 0.18 * frame.height, 0.3 * height, 0.88 * height))


def render_studio_backdrop(height: int, width: int, style: StylePreset, product_alpha: np.ndarray | None = None,
                           options: StudioOptions | None = None) -> np.ndarray:
    """A float32 [H,W,3] studio backdrop in ``style``'s palette, lit and shadowed for the product.

    Cost grows with the pixel count only: the sweep is one colour per row, light and vignette are
    separable or outer sums, the contact shadow is computed around the product at a resolution its own
    blur allows (see :func:`contact_shadow_region`), and all per-pixel work is done a block of rows at a
    time. An 8000x6000 backdrop takes about a second on two cores and no memory beyond its own.
    """
    if height < 1 or width < 1:
        raise InvalidInputError(f"backdrop size must be positive, got {width}x{height}")
    if product_alpha is not None and product_alpha.shape != (height, width):
        raise InvalidInputError(f"product mask is {product_alpha.shape}, backdrop is {(height, width)}")
    shadow, vignette, light = (options or StudioOptions()).resolved(style)
    frame = product_frame(product_alpha)
    horizon = horizon_row(height, frame)

    ys = np.arange(height, dtype=np.float32) + 0.5
    xs = np.arange(width, dtype=np.float32) + 0.5
    wall = np.asarray(style.palette["wall"], np.float32)
    floor = np.asarray(style.palette["floor"], np.float32)

    # Paper sweep: the wall brightens upward, the floor deepens toward the camera, a smooth curve between.
    # It depends on the row only: one colour per row.
    wall_shade = 1.0 + 0.06 * (1.0 - np.clip(ys / max(horizon, 1.0), 0.0, 1.0))
    floor_shade = 1.0 - 0.05 * np.clip((ys - horizon) / max(height - horizon, 1.0), 0.0, 1.0)
    band = 0.09 * height
    t = _smoothstep(np.clip((ys - (horizon - band)) / (1.6 * band), 0.0, 1.0))
    sweep = ((1.0 - t)[:, None] * wall * wall_shade[:, None] + t[:, None] * floor * floor_shade[:, None])

    # Per-pixel brightness: a soft key light centred over the product (a separable Gaussian), the vignette
    # (a smoothstep of an outer sum) and the contact shadow, applied a block of rows at a time together
    # with the dither, so no full-size temporary is ever made.
    cx = frame.center_x if frame else width / 2.0
    cy = (frame.y0 + frame.height * 0.3) if frame else horizon * 0.6
    radius2 = (0.55 * float(np.hypot(height, width))) ** 2
    light_y = np.exp(-((ys - cy) ** 2) / radius2)
    light_x = np.exp(-((xs - cx) ** 2) / radius2) * np.float32(0.10 * light)
    vignette_y = (ys - height / 2.0) ** 2 / (0.5 * height) ** 2 / 2.0
    vignette_x = (xs - width / 2.0) ** 2 / (0.5 * width) ** 2 / 2.0
    shading = None
    if frame is not None and shadow > 0:
        shading = contact_shadow_region(product_alpha, frame, shadow)

    # Fine dither so 8-bit output shows no banding on smooth gradients (seeded: deterministic).
    rng = np.random.default_rng(options.seed if options else 0)
    image = np.empty((height, width, 3), np.float32)
    rows = min(height, max(1, DITHER_BLOCK // (3 * width)))
    gain_buffer, ramp_buffer, fall_buffer = (np.empty((rows, width), np.float32) for _ in range(3))
    noise_buffer = np.empty((rows, width, 3), np.float32)  # scratch reused for every block of rows
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        n = y1 - y0
        gain, ramp, fall, noise = gain_buffer[:n], ramp_buffer[:n], fall_buffer[:n], noise_buffer[:n]
        np.multiply.outer(light_y[y0:y1], light_x, out=gain)
        gain += np.float32(1.0)
        if vignette > 0:
            np.add.outer(vignette_y[y0:y1], vignette_x, out=ramp)
            np.clip(ramp, 0.0, 1.0, out=ramp)
            np.multiply(ramp, ramp, out=fall)  # smoothstep: r * r * (3 - 2 r)
            ramp *= np.float32(-2.0)
            ramp += np.float32(3.0)
            fall *= ramp
            fall *= np.float32(-0.45 * vignette)
            fall += np.float32(1.0)
            gain *= fall
        if shading is not None:
            (region_y, region_x), darkening = shading
            top, bottom = max(y0, region_y.start), min(y1, region_y.stop)
            if bottom > top:
                gain[top - y0:bottom - y0, region_x] *= darkening[top - region_y.start:bottom - region_y.start]
        block = image[y0:y1]
        np.multiply(sweep[y0:y1, None, :], gain[..., None], out=block)
        rng.random(out=noise, dtype=np.float32)
        noise -= np.float32(0.5)
        noise *= np.float32(1.0 / 255.0)
        block += noise
        np.clip(block, 0.0, 1.0, out=block)
    return image


def contact_shadow(alpha: np.ndarray, frame: ProductFrame, strength: float) -> np.ndarray:
    """Multiplicative shadow [H,W] in (0,1]: a soft ground shadow plus a tight contact occlusion.

    Both come from the product's own footprint: the mask squashed flat onto its base line. The full-size
    map; :func:`contact_shadow_region` gives only the part that differs from 1.
    """
    out = np.ones(alpha.shape, np.float32)
    region, darkening = contact_shadow_region(alpha, frame, strength)
    out[region] = darkening
    return out


def contact_shadow_region(alpha: np.ndarray, frame: ProductFrame, strength: float
                          ) -> tuple[tuple[slice, slice], np.ndarray]:
    """(region, multiplier in (0,1] over that region); outside the region the shadow is exactly 1.

    The soft shadow's blur is 0.07 x the product's width and the contact blur 0.012 x its larger side,
    so on a large photo both are tens of pixels wide and a full-resolution blur takes minutes. The work
    is therefore confined to the footprint plus SHADOW_REACH soft sigmas (beyond that the Gaussian tail
    is far below one 8-bit level), and done on a grid reduced by an integer factor that leaves the
    contact blur SHADOW_MIN_SIGMA pixels of sigma: silhouettes are block-averaged onto the grid and the
    result is upsampled bilinearly. Products whose contact blur is under 2 x SHADOW_MIN_SIGMA px (up to
    about 650 px on their longer side) keep the full-resolution grid.
    """
    import cv2

    h, w = alpha.shape
    base = frame.y1
    soft_sigma = max(1.0, 0.07 * frame.width)
    tight_sigma = max(0.6, 0.012 * max(frame.width, frame.height))
    shift = max(1, round(tight_sigma))
    band_rows = max(2, int(0.04 * frame.height))
    squash = 0.10
    f = max(1, int(tight_sigma // SHADOW_MIN_SIGMA))

    # Region of influence: the squashed footprint (rows base - squash x height .. base) grown by the soft
    # blur's reach; the contact band ends ``shift`` rows lower and its blur is much narrower.
    reach = SHADOW_REACH * soft_sigma
    y0 = max(0, int(np.floor(base - squash * frame.height - reach)))
    y1 = min(h, int(np.ceil(base + shift + reach)) + 1)
    x0 = max(0, int(np.floor(frame.x0 - reach)))
    x1 = min(w, int(np.ceil(frame.x1 + reach)) + 1)
    rh, rw = y1 - y0, x1 - x0
    gh, gw = -(-rh // f), -(-rw // f)  # grid cell (i, j) covers region rows i*f.., columns j*f..

    # Footprint: the silhouette flattened onto the base line (an ellipse-like pool under the product).
    # The silhouette rows base - k*f .. base, block-averaged, are squashed onto the grid by a vertical warp.
    k = -(-(base - frame.y0) // f)
    silhouette = _block_mean(alpha, base - k * f, base, x0, x0 + gw * f, f)
    # Grid row v is centred on full-res row y' = y0 + f v + (f - 1) / 2 of the footprint, whose source row
    # is y = base + (y' - base) / squash; silhouette cell u is centred on row base - k f + f u + (f - 1) / 2.
    offset = k + (y0 - base + (f - 1) / 2.0) / (f * squash) - (f - 1) / (2.0 * f)
    matrix = np.float32([[1.0, 0.0, 0.0], [0.0, 1.0 / squash, offset]])
    footprint = cv2.warpAffine(silhouette, matrix, (gw, gh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    soft = cv2.GaussianBlur(footprint, (0, 0), soft_sigma / f)
    soft /= max(float(soft.max()), 1e-6)

    # Contact: only the lowest few percent of the silhouette, nudged down by ``shift`` and blurred a little.
    band_top = max(frame.y0, base - band_rows)
    top, bottom = band_top + shift - y0, min(base + shift, y1) - y0  # region rows after the shift
    contact = np.zeros((gh, gw), np.float32)
    if bottom > top:
        g0, g1 = top // f, -(-bottom // f)
        cells = _block_mean(alpha, band_top - (top - g0 * f), band_top - (top - g1 * f), x0, x0 + gw * f, f,
                            rows=(band_top, band_top + bottom - top))
        contact[g0:g1] = cells[: gh - g0]
    contact = cv2.GaussianBlur(contact, (0, 0), tight_sigma / f)
    contact /= max(float(contact.max()), 1e-6)

    darkness = np.clip(0.45 * soft + 0.55 * contact, 0.0, 1.0)
    multiplier = (1.0 - np.float32(0.85 * strength) * darkness).astype(np.float32)
    if f > 1:
        multiplier = cv2.resize(multiplier, (gw * f, gh * f), interpolation=cv2.INTER_LINEAR)[:rh, :rw]
    return (slice(y0, y1), slice(x0, x1)), np.ascontiguousarray(multiplier)


def _block_mean(alpha: np.ndarray, r0: int, r1: int, c0: int, c1: int, f: int,
                rows: tuple[int, int] | None = None) -> np.ndarray:
    """Mean of ``alpha > 0.5`` over f x f blocks of rows r0..r1, columns c0..c1 (outside the image and
    outside ``rows`` when given count as background): float32 [(r1-r0)/f, (c1-c0)/f]."""
    import cv2

    h, w = alpha.shape
    lo, hi = (max(r0, 0), min(r1, h)) if rows is None else (max(r0, rows[0], 0), min(r1, rows[1], h))
    hard = np.zeros((r1 - r0, c1 - c0), np.uint8)
    if hi > lo and min(c1, w) > c0:
        hard[lo - r0:hi - r0, : min(c1, w) - c0] = alpha[lo:hi, c0:min(c1, w)] > 0.5
    if f == 1:
        return hard.astype(np.float32)
    hard *= 255  # area-averaged as uint8: 1/255 steps are plenty for a blurred shadow
    cells = cv2.resize(hard, ((c1 - c0) // f, (r1 - r0) // f), interpolation=cv2.INTER_AREA)
    return cells.astype(np.float32) / 255.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)
