"""Small value types shared by the masking modules."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidInputError

KEEP_MODES = ("main", "largest", "all")


@dataclass(frozen=True)
class Prompt:
    """Optional user guidance in pixel coordinates of the image it applies to.

    ``box`` is (x0, y0, x1, y1). ``points`` are (x, y, label) with label 1 = product, 0 = background.
    An empty prompt means "choose the main product automatically".
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, int], ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return self.box is None and not self.points

    def clipped(self, width: int, height: int) -> Prompt:
        """The prompt with coordinates clipped into a ``width`` x ``height`` image."""
        box = None
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            x0, x1 = sorted((min(max(x0, 0), width - 1), min(max(x1, 0), width - 1)))
            y0, y1 = sorted((min(max(y0, 0), height - 1), min(max(y1, 0), height - 1)))
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise InvalidInputError(f"the box {self.box} is empty inside a {width}x{height} image")
            box = (x0, y0, x1, y1)
        points = tuple((min(max(x, 0), width - 1), min(max(y, 0), height - 1), int(lab)) for x, y, lab in self.points)
        return Prompt(box=box, points=points)


@dataclass(frozen=True)
class RefineOptions:
    """Refinement applied to every raw mask, from SAM or from the classical path.

    - ``fill_holes``: fill enclosed background holes inside the product.
    - ``keep``: "main" keeps the largest component plus any at least ``min_component_ratio`` of it;
      "largest" keeps only the largest; "all" keeps everything.
    - ``grow_px``: dilate (>0) or erode (<0) the mask by this many pixels.
    - ``edge_refine``: snap the soft edge to the image with a guided filter (no halo).
    - ``feather_px``: a soft fall-off outward only (Gaussian in the distance from the product, exactly 0
      beyond ``feather_px``); the product core keeps alpha 1.
    """

    fill_holes: bool = True
    keep: str = "main"
    min_component_ratio: float = 0.15
    grow_px: int = 0
    edge_refine: bool = True
    edge_radius_px: int = 0  # 0 = automatic from the image size
    feather_px: float = 0.0

    def __post_init__(self) -> None:
        if self.keep not in KEEP_MODES:
            raise InvalidInputError(f"keep must be one of {KEEP_MODES}, got {self.keep!r}")
        if not 0.0 <= self.min_component_ratio <= 1.0:
            raise InvalidInputError("min_component_ratio must be between 0 and 1")
        if self.feather_px < 0 or self.edge_radius_px < 0:
            raise InvalidInputError("feather_px and edge_radius_px must be >= 0")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """'x0,y0,x1,y1' -> tuple, '' -> None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        raise InvalidInputError(f"box must be 'x0,y0,x1,y1' in pixels, got {text!r}") from None
    if len(values) != 4:
        raise InvalidInputError(f"box must have 4 numbers 'x0,y0,x1,y1', got {text!r}")
    return values  # type: ignore[return-value]


def parse_points(text: str) -> tuple[tuple[float, float, int], ...]:
    """'x,y[,label]; x,y[,label]' -> points; label defaults to 1 (product), 0 marks background."""
    points = []
    for chunk in (text or "").replace("\n", ";").split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        parts = [p.strip() for p in chunk.split(",")]
        try:
            if len(parts) == 2:
                points.append((float(parts[0]), float(parts[1]), 1))
            elif len(parts) == 3 and parts[2] in ("0", "1"):
                points.append((float(parts[0]), float(parts[1]), int(parts[2])))
            else:
                raise ValueError
        except ValueError:
            raise InvalidInputError(f"points must be 'x,y' or 'x,y,label' separated by ';', got {chunk!r}") from None
    return tuple(points)
