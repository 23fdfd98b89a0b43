"""Synthetic studio product shots with known masks, drawn in code (no files, deterministic)."""

from __future__ import annotations

import cv2
import numpy as np


def studio_product_photo(height: int, width: int, seed: int = 0, background: str = "sweep"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """A shaded bottle with a label on a light studio sweep with a soft shadow.

    Returns (uint8 RGB [H,W,3], bool product mask [H,W]).
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if background == "sweep":
        bg = 0.93 + 0.05 * (1 - ys / height) - 0.04 * ((xs - width / 2) / width) ** 2
        bg = np.dstack([bg, bg * 0.99, bg * 0.97])
    else:
        bg = np.ones((height, width, 3), np.float32) * np.array([0.9, 0.85, 0.8], np.float32)

    cx, base = width * (0.45 + 0.1 * rng.random()), height * 0.82
    body_w, body_h = width * 0.16, height * 0.5
    mask = np.zeros((height, width), np.uint8)
    top = int(base - body_h)
    cv2.rectangle(mask, (int(cx - body_w / 2), top), (int(cx + body_w / 2), int(base)), 1, -1)
    neck_w = body_w * 0.35
    cv2.rectangle(mask, (int(cx - neck_w / 2), int(top - body_h * 0.3)), (int(cx + neck_w / 2), top), 1, -1)
    cv2.ellipse(mask, (int(cx), top), (int(body_w / 2), int(body_h * 0.08)), 0, 180, 360, 1, -1)
    product = mask.astype(bool)

    # soft floor shadow to the right of the base
    shadow = np.zeros((height, width), np.float32)
    cv2.ellipse(shadow, (int(cx + body_w * 0.4), int(base)), (int(body_w * 0.9), int(body_h * 0.05)), 0, 0, 360, 1, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, body_w * 0.15))
    bg = bg * (1 - 0.25 * shadow[..., None])

    # glass-green bottle shaded like a cylinder, with a cream label
    u = np.clip((xs - (cx - body_w / 2)) / body_w, 0, 1)
    shade = 0.55 + 0.45 * np.clip(np.sin(np.pi * u), 0, 1) ** 0.7
    colour = np.dstack([0.12 * shade, 0.42 * shade, 0.25 * shade])
    label = (ys > base - body_h * 0.65) & (ys < base - body_h * 0.3)
    colour[label] = np.dstack([0.95 * shade, 0.9 * shade, 0.78 * shade])[label]
    image = np.where(product[..., None], colour, bg)
    image = image + rng.normal(0, 0.006, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), product


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def image_batch(*photos: np.ndarray):
    """uint8 [H,W,3] photos -> a float32 ComfyUI IMAGE batch."""
    import torch

    return torch.from_numpy(np.stack(photos).astype(np.float32) / 255.0)
