"""Raw product masks from SAM: the user's box/points when given, otherwise an automatic product choice.

``SamMasker`` wraps ``segment_anything.SamPredictor`` and keeps the image embeddings of the last few
images (LRU), so prompting the same image again never re-runs the image encoder. Refinement of the
raw mask (holes, components, edges) happens elsewhere.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .sam_loader import LoadedSam
from .types import Prompt

# ---------------------------------------------------------------------------------------- ranking
AREA_REJECT_MIN = 0.001  # below: a speck, never the product
AREA_REJECT_MAX = 0.95  # above: the whole frame
AREA_LO, AREA_HI = 0.03, 0.70  # a product usually covers this much of a product shot
BORDER_TOUCH_FRACTION = 0.05  # a side counts as touched when this much of it is covered
W_IOU, W_STABILITY, W_CENTRE, W_HINT = 1.0, 1.0, 1.0, 1.5
W_AREA_SMALL, W_AREA_LARGE = 1.0, 3.0
BORDER_PENALTY_FEW, BORDER_PENALTY_MANY = 0.15, 3.0
STABILITY_OFFSET = 1.0  # as SamAutomaticMaskGenerator
SCORE_MAX_SIDE = 256  # candidates are scored at most this large (SAM's low-res logits are 256)


def rank_candidates(masks: np.ndarray, predicted_iou: np.ndarray, stability: np.ndarray,
                    hint: np.ndarray | None = None) -> np.ndarray:
    """Score candidate product masks; higher is better and ``-inf`` means rejected.

    ``masks`` is bool [N,H,W]; ``predicted_iou`` and ``stability`` are [N]; ``hint`` is an optional
    bool [H,W] first foreground estimate (ignored when empty). The score adds:

    - SAM's predicted IoU and the stability score (``W_IOU``, ``W_STABILITY``);
    - centrality: minus the centroid's distance from the frame centre over the half diagonal;
    - an area prior: 0 for ``AREA_LO``..``AREA_HI`` of the frame, falling off outside;
    - borders: a strong penalty when 3 sides are touched (that is background), a small one per side
      for 1-2 (products may be cropped by the frame);
    - ``W_HINT`` times the IoU with ``hint`` when a hint is given.

    Rejected (``-inf``): area below ``AREA_REJECT_MIN`` or above ``AREA_REJECT_MAX``, or all 4 sides
    touched. The best candidate is ``argmax``; the order is ``np.argsort(-scores, kind="stable")``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise InvalidInputError(f"masks must be [N,H,W], got shape {masks.shape}")
    n, h, w = masks.shape
    iou = np.nan_to_num(np.asarray(predicted_iou, dtype=np.float64).reshape(n))
    stab = np.nan_to_num(np.asarray(stability, dtype=np.float64).reshape(n))
    if n == 0:
        return np.zeros(0, dtype=np.float64)

    counts = masks.sum(axis=(1, 2)).astype(np.float64)
    area = counts / float(h * w)
    scores = W_IOU * iou + W_STABILITY * stab

    safe = np.maximum(counts, 1.0)
    ys = (masks.sum(axis=2) * np.arange(h)).sum(axis=1) / safe
    xs = (masks.sum(axis=1) * np.arange(w)).sum(axis=1) / safe
    half_diag = max(math.hypot((h - 1) / 2.0, (w - 1) / 2.0), 1e-6)
    scores -= W_CENTRE * np.hypot(ys - (h - 1) / 2.0, xs - (w - 1) / 2.0) / half_diag

    small = np.log(AREA_LO / np.maximum(area, 1e-12))
    large = (area - AREA_HI) / (AREA_REJECT_MAX - AREA_HI)
    scores -= np.where(area < AREA_LO, W_AREA_SMALL * small, 0.0)
    scores -= np.where(area > AREA_HI, W_AREA_LARGE * large, 0.0)

    sides = np.stack([masks[:, 0, :].mean(axis=1), masks[:, -1, :].mean(axis=1),
                      masks[:, :, 0].mean(axis=1), masks[:, :, -1].mean(axis=1)], axis=1)
    touched = (sides >= BORDER_TOUCH_FRACTION).sum(axis=1)
    scores -= np.where(touched >= 3, BORDER_PENALTY_MANY, BORDER_PENALTY_FEW * touched)

    if hint is not None:
        hint = np.asarray(hint, dtype=bool)
        if hint.shape != (h, w):
            raise InvalidInputError(f"hint has shape {hint.shape}, the candidates are {(h, w)}")
        if hint.any():
            inter = (masks & hint).sum(axis=(1, 2))
            union = (masks | hint).sum(axis=(1, 2))
            scores += W_HINT * inter / np.maximum(union, 1)

    rejected = (area < AREA_REJECT_MIN) | (area > AREA_REJECT_MAX) | (touched >= 4)
    return np.where(rejected, -np.inf, scores)


# ----------------------------------------------------------------------------------------- masker
class SamMasker:
    """Product masks from a loaded SAM, with an LRU cache of image embeddings.

    ``encoder_runs`` counts image-encoder passes, ``cache_hits`` the images served from the cache.
    One masker may be shared between threads (calls are serialised).
    """

    def __init__(self, sam: LoadedSam, cache_size: int = 4, grid_points: int = 3,
                 box_margin: float = 0.02) -> None:
        from segment_anything import SamPredictor

        if cache_size < 0 or grid_points < 0 or box_margin < 0:
            raise InvalidInputError("cache_size, grid_points and box_margin must be >= 0")
        self.sam = sam
        self.cache_size = int(cache_size)
        self.grid_points = int(grid_points)
        self.box_margin = float(box_margin)
        self.encoder_runs = 0
        self.cache_hits = 0
        self._predictor = SamPredictor(sam.model)
        self._cache: OrderedDict[tuple, tuple[Any, tuple[int, int], tuple[int, int]]] = OrderedDict()
        self._current: tuple | None = None
        self._lock = threading.Lock()
        self._identity = (sam.name, id(sam.model), str(sam.device))

    # -------------------------------------------------------------------------------- public
    def segment(self, rgb: np.ndarray, prompt: Prompt | None = None, hint: np.ndarray | None = None
                ) -> np.ndarray:
        """Raw bool [H,W] product mask for a float32 [H,W,3] image in 0..1 (uint8 is accepted too).

        A non-empty ``prompt`` (pixel coordinates) decides alone; a box also bounds the result (plus a
        ``box_margin`` of the longer side). Without one the main product is chosen automatically
        among the candidates of a centre click plus, with a non-empty ``hint`` (bool [H,W]), a click
        deep inside it and its bounding box, or without one a ``grid_points`` x ``grid_points`` grid
        of clicks; see ``rank_candidates``. All-False when every candidate is rejected. Inputs are
        never modified.
        """
        image = _to_uint8_rgb(rgb)
        h, w = image.shape[:2]
        hint_mask = _check_hint(hint, h, w)
        with self._lock:
            self._set_image(image)
            if prompt is not None and not prompt.is_empty:
                return self._segment_prompted(prompt.clipped(w, h), h, w)
            return self._segment_auto(hint_mask, h, w)

    def clear_cache(self) -> None:
        """Forget every cached embedding (the counters are kept)."""
        with self._lock:
            self._cache.clear()
            self._current = None
            self._predictor.reset_image()

    @property
    def cached_images(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------------------------ embedding
    def _set_image(self, image: np.ndarray) -> None:
        digest = hashlib.sha1(image.data, usedforsecurity=False).hexdigest()  # a cache key, not security
        key = (self._identity, digest, image.shape)
        predictor = self._predictor
        if key == self._current and predictor.is_image_set:
            self.cache_hits += 1
        elif key in self._cache:
            features, original_size, input_size = self._cache[key]
            predictor.reset_image()
            predictor.features = features
            predictor.original_size = original_size
            predictor.input_size = input_size
            predictor.is_image_set = True
            self.cache_hits += 1
        else:
            predictor.set_image(image, image_format="RGB")
            self.encoder_runs += 1
            if self.cache_size:
                self._cache[key] = (predictor.features, predictor.original_size, predictor.input_size)
        self._current = key
        if key in self._cache:
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    # ------------------------------------------------------------------------------- decoding
    def _decode(self, points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None,
                multimask: bool | None) -> tuple[Any, Any]:
        """Low-res logits [B,C,h,w] and predicted IoU [B,C] for B prompts in image pixels.

        ``multimask=None`` returns all of the decoder's outputs (the single-mask one first).
        """
        import torch

        p = self._predictor
        model = p.model
        coords = None
        boxes = None
        if points is not None:
            pts = p.transform.apply_coords(points.astype(np.float64), p.original_size)
            coords = (torch.as_tensor(pts, dtype=torch.float, device=p.device),
                      torch.as_tensor(labels, dtype=torch.int, device=p.device))
        if box is not None:
            bx = p.transform.apply_boxes(box.astype(np.float64), p.original_size)
            boxes = torch.as_tensor(bx, dtype=torch.float, device=p.device)
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(points=coords, boxes=boxes, masks=None)
            if multimask is None:
                low_res, iou = model.mask_decoder.predict_masks(
                    image_embeddings=p.features, image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
            else:
                low_res, iou = model.mask_decoder(
                    image_embeddings=p.features, image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                    multimask_output=multimask)
        return low_res, iou

    def _full_mask(self, low_res_one: Any) -> np.ndarray:
        """One low-res logit map [h,w] -> bool mask at the image's size (SAM's own post-processing)."""
        import torch

        p = self._predictor
        with torch.no_grad():
            logits = p.model.postprocess_masks(low_res_one[None, None], p.input_size, p.original_size)
        return (logits[0, 0] > p.model.mask_threshold).cpu().numpy()

    # -------------------------------------------------------------------------------- prompted
    def _segment_prompted(self, prompt: Prompt, h: int, w: int) -> np.ndarray:
        points = labels = box = None
        if prompt.points:
            points = np.array([[(x, y) for x, y, _ in prompt.points]], dtype=np.float64)
            labels = np.array([[lab for _, _, lab in prompt.points]], dtype=np.int64)
        if prompt.box is not None:
            box = np.array([prompt.box], dtype=np.float64)
        multimask = box is None and len(prompt.points) == 1
        low_res, iou = self._decode(points, labels, box, multimask)
        best = int(iou[0].argmax())
        mask = self._full_mask(low_res[0, best])
        if prompt.box is not None:
            margin = math.ceil(self.box_margin * max(h, w))
            x0, y0, x1, y1 = prompt.box
            keep = np.zeros_like(mask)
            keep[max(math.floor(y0) - margin, 0):math.ceil(y1) + margin + 1,
                 max(math.floor(x0) - margin, 0):math.ceil(x1) + margin + 1] = True
            mask &= keep
        return mask

    # ------------------------------------------------------------------------------- automatic
    def _segment_auto(self, hint: np.ndarray | None, h: int, w: int) -> np.ndarray:
        import torch
        from segment_anything.utils.amg import calculate_stability_score

        points = [((w - 1) / 2.0, (h - 1) / 2.0)]
        if hint is not None:
            points.append(_deepest_point(hint))
        else:  # nothing to go on: also try a coarse grid of clicks
            g = self.grid_points
            points += [((i + 0.5) * w / g, (j + 0.5) * h / g) for j in range(g) for i in range(g)]
        points = list(dict.fromkeys((round(x, 1), round(y, 1)) for x, y in points))
        coords = np.array(points, dtype=np.float64)[:, None, :]
        logits, ious = self._decode(coords, np.ones((len(points), 1), dtype=np.int64), None, None)
        if hint is not None:
            ys, xs = np.nonzero(hint)
            box = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=np.float64)
            box_logits, box_ious = self._decode(None, None, box, None)
            logits, ious = torch.cat([logits, box_logits]), torch.cat([ious, box_ious])
        flat = logits.flatten(0, 1)  # [N, h, w]
        iou = ious.flatten()

        scale = min(1.0, SCORE_MAX_SIDE / max(h, w))
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        small = self._resize_logits(flat, (sh, sw))
        threshold = self._predictor.model.mask_threshold
        stability = calculate_stability_score(small, threshold, STABILITY_OFFSET)
        masks = (small > threshold).cpu().numpy()
        small_hint = None
        if hint is not None:
            import cv2

            small_hint = cv2.resize(hint.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0.5
        scores = rank_candidates(masks, iou.cpu().numpy(), stability.cpu().numpy(), small_hint)
        best = int(np.argmax(scores))
        if not np.isfinite(scores[best]):
            return np.zeros((h, w), dtype=bool)
        return self._full_mask(flat[best])

    def _resize_logits(self, low_res: Any, size: tuple[int, int]) -> Any:
        """[N,h,w] low-res logits -> [N,*size]: crop SAM's padding, then resize (cheap approximation
        of ``Sam.postprocess_masks`` for scoring)."""
        import torch.nn.functional as F

        p = self._predictor
        img = p.model.image_encoder.img_size
        lh, lw = low_res.shape[-2:]
        vh = max(1, math.ceil(p.input_size[0] * lh / img))
        vw = max(1, math.ceil(p.input_size[1] * lw / img))
        cropped = low_res[:, None, :vh, :vw].float()
        return F.interpolate(cropped, size=size, mode="bilinear", align_corners=False)[:, 0]


def _to_uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"SAM needs an [H,W,3] RGB image, got shape {arr.shape}")
    if min(arr.shape[:2]) < 2:
        raise InvalidInputError(f"image is {arr.shape[1]}x{arr.shape[0]}; each side must be at least 2 px")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    scaled = np.multiply(arr, 255.0, dtype=np.float32)  # a new array: the input is never touched
    np.fmax(scaled, 0.0, out=scaled)  # fmax/fmin also turn NaN into 0
    np.fmin(scaled, 255.0, out=scaled)
    scaled += 0.5
    return np.ascontiguousarray(scaled.astype(np.uint8))


def _check_hint(hint: np.ndarray | None, h: int, w: int) -> np.ndarray | None:
    """The hint as a new bool array, or None when absent or empty."""
    if hint is None:
        return None
    arr = np.asarray(hint)
    if arr.shape != (h, w):
        raise InvalidInputError(f"hint has shape {arr.shape}, the image is {(h, w)}")
    mask = arr > 0.5 if arr.dtype != bool else arr.copy()
    return mask if mask.any() else None


def _deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the hint pixel farthest from its edge: inside the object even when it is not convex."""
    import cv2

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)
