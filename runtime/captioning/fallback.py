"""Weight-free captions from image statistics, used when no captioner is connected.

The background caption names the dominant colours (nearest named colour in OKLab, by pixel share),
brightness, contrast, texture and colour temperature; both captions give the product's colours, size
and position. Without a product mask the centre of the image stands in for the product and its
border for the background, and size/position are not claimed. Deterministic: no randomness at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMED_COLOURS: dict[str, str] = {
    "white": "#F5F5F5", "off-white": "#ECE8DF", "cream": "#F3E5C0", "beige": "#D8C7A6", "light grey": "#C4C4C4",
    "grey": "#8C8C8C", "charcoal": "#3F3F3F", "black": "#121212", "red": "#C62828", "dark red": "#7A1A1F",
    "pink": "#E98BA8", "pastel pink": "#F4CCD6", "orange": "#EF7D22", "peach": "#F6B893", "terracotta": "#C46A4B",
    "brown": "#6E4628", "tan": "#B98C5E", "gold": "#CFA23A", "yellow": "#F2D43D", "olive": "#7A7A35",
    "green": "#3C9A48", "dark green": "#1F4D2B", "sage": "#A3B898", "mint": "#BDE6CF", "teal": "#1D7F7F",
    "turquoise": "#43C1C4", "light blue": "#A9CFEA", "blue": "#2F64C2", "navy": "#1A2550", "purple": "#6E3B9E",
    "lavender": "#C7B6E2",
}

CENTRE = (0.25, 0.75)
BORDER = 0.12
MIN_SHARE = 0.08
STAT_SIDE = 256  # statistics are computed on a copy at most this large


@dataclass(frozen=True)
class RegionStats:
    """Statistics of a weighted region; lightness/contrast in CIE L* units, warmth = mean b*."""

    colours: tuple[tuple[str, float], ...]
    lightness: float
    contrast: float
    warmth: float
    texture: float
    share: float  # of the image area

    @property
    def colour_text(self) -> str:
        return join_words([name for name, _ in self.colours]) or "neutral"


def join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def region_stats(rgb: np.ndarray, weight: np.ndarray, top: int = 3) -> RegionStats:
    """Colours, brightness, contrast, warmth and texture of the pixels where ``weight`` > 0."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)
    w = np.clip(weight, 0.0, 1.0).astype(np.float32)
    total = float(w.sum())
    share = total / w.size
    if total < 1e-6:
        return RegionStats((), 0.0, 0.0, 0.0, 0.0, 0.0)
    flat_lab = lab.reshape(-1, 3)
    flat_w = w.reshape(-1)
    mean = (flat_lab * flat_w[:, None]).sum(0) / total
    std = float(np.sqrt((((flat_lab[:, 0] - mean[0]) ** 2) * flat_w).sum() / total))
    gy, gx = np.gradient(lab[:, :, 0])
    texture = float((np.hypot(gx, gy) * w).sum() / total)
    colours = _dominant_colours(oklab(rgb.reshape(-1, 3)), flat_w, top)
    return RegionStats(colours, float(mean[0]), std, float(mean[2]), texture, share)


_LMS = np.array([[0.4122214708, 0.5363325363, 0.0514459929], [0.2119034982, 0.6806995451, 0.1073969566],
                 [0.0883024619, 0.2817188376, 0.6299787005]], np.float32)
_OKLAB = np.array([[0.2104542553, 0.7936177850, -0.0040720468], [1.9779984951, -2.4285922050, 0.4505937099],
                   [0.0259040371, 0.7827717662, -0.8086757660]], np.float32)


def oklab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1 (..., 3) -> OKLab (Björn Ottosson), whose hues stay put in the blues unlike CIE Lab."""
    rgb = np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return np.cbrt(linear @ _LMS.T) @ _OKLAB.T


def _named_oklab() -> tuple[list[str], np.ndarray]:
    from ..backdrop.styles import hex_to_rgb

    names = list(NAMED_COLOURS)
    return names, oklab(np.array([hex_to_rgb(NAMED_COLOURS[n]) for n in names], dtype=np.float32))


def _dominant_colours(lab: np.ndarray, weight: np.ndarray, top: int) -> tuple[tuple[str, float], ...]:
    names, palette = _named_oklab()
    nearest = np.argmin(((lab[:, None, :] - palette[None, :, :]) ** 2).sum(-1), axis=1)
    shares = np.bincount(nearest, weights=weight, minlength=len(names)) / max(float(weight.sum()), 1e-6)
    order = sorted(range(len(names)), key=lambda i: (-shares[i], i))
    return tuple((names[i], float(shares[i])) for i in order[:top] if shares[i] >= MIN_SHARE)


def brightness_word(lightness: float) -> str:
    for limit, word in ((20, "very dark"), (40, "dark"), (60, "mid-toned"), (80, "bright")):
        if lightness < limit:
            return word
    return "very bright"


def lighting_words(stats: RegionStats) -> str:
    light = ("soft, even lighting" if stats.contrast < 8 else
             "gentle shading" if stats.contrast < 20 else "high-contrast lighting")
    tone = "warm tones" if stats.warmth > 8 else "cool tones" if stats.warmth < -8 else "neutral tones"
    return f"{light}, {tone}"


def texture_word(stats: RegionStats) -> str:
    return "plain" if stats.texture < 0.6 else "lightly textured" if stats.texture < 2.0 else "busy, textured"


def size_word(share: float) -> str:
    for limit, word in ((0.05, "small"), (0.2, "medium-sized"), (0.45, "large")):
        if share < limit:
            return word
    return "frame-filling"


def position_words(alpha: np.ndarray) -> str:
    """Where the product's centre of mass sits, in thirds of the frame ("centered", "in the upper left"...)."""
    height, width = alpha.shape
    total = float(alpha.sum())
    ys, xs = np.mgrid[0:height, 0:width]
    cx = float((xs * alpha).sum() / total) / max(width - 1, 1)
    cy = float((ys * alpha).sum() / total) / max(height - 1, 1)
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    if (col, row) == ("center", "middle"):
        return "centered"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return "near the top" if row == "upper" else "near the bottom"
    return f"in the {row} {col}"


def fallback_captions(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[str, str]:
    """(product caption, background caption) from statistics of an [H,W,3] float image and its
    product alpha (1 = product), or the image's centre/border when ``alpha`` is None."""
    from .views import limit_size

    small, small_alpha = limit_size(rgb, alpha, STAT_SIDE)
    height, width = small.shape[:2]
    if small_alpha is None:
        product_w = np.zeros((height, width), np.float32)
        lo, hi = CENTRE
        product_w[int(lo * height):int(hi * height), int(lo * width):int(hi * width)] = 1.0
        background_w = np.ones((height, width), np.float32)
        bh, bw = max(1, int(BORDER * height)), max(1, int(BORDER * width))
        background_w[bh:height - bh, bw:width - bw] = 0.0
        product = region_stats(small, product_w)
        background = region_stats(small, background_w)
        return (f"a product in {product.colour_text} tones",
                f"a {texture_word(background)}, {brightness_word(background.lightness)} "
                f"{background.colour_text} background, {lighting_words(background)}")

    a = np.clip(small_alpha, 0.0, 1.0).astype(np.float32)
    product = region_stats(small, a)
    background = region_stats(small, 1.0 - a)
    if product.share < 1e-3:
        product_text = "no product visible"
        placement = ""
    else:
        product_text = (f"a {product.colour_text} product, {size_word(product.share)}, "
                        f"{position_words(a)}")
        placement = f", with a {size_word(product.share)} product {position_words(a)}"
    if background.share < 1e-3:
        return product_text, "no background visible: the product fills the frame"
    background_text = (f"a {texture_word(background)}, {brightness_word(background.lightness)} "
                       f"{background.colour_text} background, {lighting_words(background)}{placement}")
    return product_text, background_text
