"""Public API of the watermark codec: ``embed``, ``detect``, ``is_marked`` (codec versions 1, 2 and 3).

A keyed, blind, periodic spread-spectrum mark (Kutter 1998). A tile carrying a sync pattern and the
error-corrected payload (a 64-bit ID; v3: 40-bit) is repeated over the image's luminance, shaped by local
texture. The detector recovers scale/aspect/rotation from the residual's autocorrelation lattice, folds all
periods onto one tile, finds the crop offset with the sync pattern and decodes the payload with soft Viterbi
+ CRC.
v1 repeats one keyed 64 px tile in every image; v2 (carrier.py, codec_v2.py) gives every image its own
carrier (keyed variant, dihedral transform and shift), renders it at 128 px on large or flat images, and
searches the dihedral transforms at detection. v3 is v2 with a 40-bit ID: the same carrier and sync, a shorter
word that still decodes where an attack leaves too few bits for v2's. ``detect`` reads every version (v3 and v2
share one search; then v1).

Re-marking policy (same key): ``embed`` first looks for a mark on the embedding grid, i.e. in a previous
output of ``embed`` that may since have been cropped or recompressed but not resized. If that mark carries
the *same* payload, the image is returned unchanged (as a copy): embedding is idempotent. If it carries a
*different* payload, ``AlreadyWatermarkedError`` is raised, because two marks under one key would garble
each other; mark the unmarked original instead. Marks under other keys are invisible to this check and are
left alone (both stay readable, each with its own key). A resized mark is not looked for (that would cost a
full detection); call ``detect`` first where that matters.

Memory: the codec allocates and frees a few MB of float32 temporaries per call. In a fresh process stock glibc
gives them back to the kernel at the end of each call (it trims its heap top) and faults them in again on the
next, which made embedding at 512 px take up to 1.7x as long. So the first ``embed``, ``detect`` or ``analyse`` tunes
this process's malloc (``runtime/allocator.tune_allocator(export=False)``: nothing exported, the user's
``GLIBC_TUNABLES`` and ``BACKDROP_ALLOCATOR=stock`` respected; a bad ``BACKDROP_ALLOCATOR`` is an
InvalidInputError).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cv2
import numpy as np

from ..allocator import tune_allocator
from ..errors import InvalidInputError
from . import carrier
from . import codec_v2 as v2
from . import payload as coding
from .arrays import ImageTooSmallError, add_to_colour, check_size, extremes, split, to_levels
from .folding import Alignment, align_spectra, align_spectrum, fold, fold_stretched, whiten, whitened_spectrum
from .lattice import IDENTITY, NEIGHBOURS, RETURNED, Lattice, estimate_lattices, neighbour_stretches
from .localisation import PresenceMap, presence_map
from .pattern import PERIOD, keyed_layout
from .perceptual import BLOCK, V1_SHAPING, amplitude_map, headroom_shift, luma, texture_rms
from .regions import windows
from .scoring import log10_false_positive

PAYLOAD_BITS: int = coding.PAYLOAD_BITS
MIN_SIDE: int = 2 * PERIOD          # 128 px: smallest width/height embed() accepts (two periods)
MIN_DETECT_SIDE: int = PERIOD       # 64 px: smallest width/height detect() accepts
MIN_KEY_BYTES: int = 16
MAX_STRENGTH: float = 4.0
DEFAULT_FPR: float = 1e-6
EXISTING_WINDOW: int = 8 * PERIOD   # px (per side) that embed's re-marking check looks at
STRIPE: int = 2 * PERIOD            # rows embedded at a time (a multiple of every tile period)
VERSIONS: tuple[int, ...] = (3, 2, 1)  # codec versions detect() tries, in this order (v3 and v2 share one search)
DEFAULT_VERSION: int = 3            # what embed() writes unless told otherwise (v1 and v2 marks still verify)
HYPOTHESES_V1: int = RETURNED + 1  # v1's lattice hypotheses at most (the searches' best + the grid)
MIN_PSNR: float = 40.05             # dB: v2 at strength <= 1 scales its mark down to stay above this

__all__ = [
    "DEFAULT_VERSION", "MIN_DETECT_SIDE", "MIN_SIDE", "PAYLOAD_BITS", "VERSIONS", "AlreadyWatermarkedError",
    "Analysis", "Detection", "ImageTooSmallError", "analyse", "detect", "embed", "is_marked", "payload_bits",
]


class AlreadyWatermarkedError(InvalidInputError):
    """The image already carries a different payload under the same key (see the re-marking policy)."""

    def __init__(self, message: str, existing_payload: int):
        super().__init__(message)
        self.existing_payload = existing_payload


@dataclass(frozen=True)
class Detection:
    """Result of ``detect``. ``payload`` is None whenever ``found`` is False.

    ``version``: the codec version that made the mark (0 when none was found). ``presence``: with
    ``detect(..., localise=True)`` and a mark found, where in the image the mark is (see localisation.py).
    """

    found: bool
    payload: int | None
    false_positive_probability: float
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    presence: PresenceMap | None = None


@dataclass(frozen=True)
class Analysis:
    """Everything the detector worked out, for diagnostics and benchmarks (``detect`` is the API).

    ``bits`` are the 64 decoded payload bits even when the CRC failed: never report them as an ID.
    """

    lattice: Lattice        # in the image's px
    alignment: Alignment
    payload: int | None
    bits: np.ndarray
    hypotheses: int
    log10_fpp: float
    version: int = 1
    level: int = 0          # pyramid level the tile was folded at (1: the image downscaled 2x)
    dihedral: int = 0       # v2: the transform that brought the folded tile onto its variant's sync
    variant: int = 0        # v2: the carrier variant


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"the watermark key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise InvalidInputError(
            f"the watermark key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes (e.g. os.urandom(32))"
        )
    return key


def _check_payload(value: int, bits: int, version: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"the payload must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << bits:
        where = f" of codec v{version}" if version is not None else ""
        hint = "; codec v2 carries 64 bits" if bits < PAYLOAD_BITS else ""
        raise InvalidInputError(f"the payload{where} must be in 0 .. 2**{bits} - 1, got {value}{hint}")
    return value


# ---------------------------------------------------------------------------------------------------- detect


def _could_pass(log10_fpp_if_crc: float, fpr_threshold: float) -> bool:
    """Whether a CRC pass would meet ``fpr_threshold`` (else decoding cannot matter)."""
    return log10_fpp_if_crc <= math.log10(fpr_threshold)


def _family(version: int) -> int:
    """The search that reads a codec version: 1 (v1's one keyed tile) or 2 (the per-image carrier of v2 and v3:
    their sync is the same, so one search serves both and only the payload code read after it differs)."""
    return 1 if version == 1 else 2


def _families(versions: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """The searches ``versions`` need, in order, each with the versions whose payload code it decodes."""
    out: dict[int, list[int]] = {}
    for version in versions:
        out.setdefault(_family(version), []).append(version)
    return {family: tuple(codes) for family, codes in out.items()}


def payload_bits(version: int) -> int:
    """How many bits of payload (ID) a codec version carries: 64 (v1, v2) or 40 (v3)."""
    if isinstance(version, bool) or version not in VERSIONS:
        raise InvalidInputError(f"unknown watermark codec version {version!r}; use one of {sorted(VERSIONS)}")
    return coding.CODES[version].payload_bits


@dataclass
class _Read:
    """One hypothesis read by one search; ``codes``: the versions whose payload code it is decoded with, in order
    (one search's, ``_families``). ``version``: the one whose word passed (else the first), ``bits`` that word's
    payload bits."""

    hypothesis: v2.Hypothesis
    alignment: Alignment
    codes: tuple[int, ...]
    value: int | None = None
    bits: np.ndarray | None = None
    version: int = 0
    dihedral: int = 0
    variant: int = 0
    decoded: bool = False  # Viterbi-decoded already
    listed: bool = False   # list-decoded already

    def __post_init__(self) -> None:
        self.version = self.version or self.codes[0]

    @property
    def family(self) -> int:
        return _family(self.codes[0])

    def soft(self, key: bytes, version: int) -> np.ndarray:
        """Soft coded bits of ``version``'s code word from the aligned chips."""
        layout = keyed_layout(key) if self.family == 1 else carrier.layout(key, self.variant, version)
        return layout.soft_bits(self.alignment.chips)


class _Scorer:
    """The false-positive bound of one search (see scoring.py): ``searches`` searches ran, and a word is checked
    under each of ``codes`` payload codes."""

    def __init__(self, family: int, hypotheses: int, searches: int, codes: int = 1):
        self.hypotheses = hypotheses
        self.searched = searches * (v2.SEARCHED if family == 2 else 1)
        self.checked = carrier.VARIANTS if family == 2 else 1
        self.codes = codes

    def log10_fpp(self, z: float, crc_ok: bool) -> float:
        return log10_false_positive(z, self.hypotheses, crc_ok, self.searched, self.checked, self.codes)


def _accept(key: bytes, read: _Read, version: int, value: int | None) -> int | None:
    """A CRC-valid word, if it also passes the version's own check (v2, v3: its nonce names the variant)."""
    if value is None or version == 1 or v2.nonce_matches(key, value, read.variant, version):
        return value
    return None


def _viterbi(key: bytes, read: _Read) -> None:
    """Decode ``read`` under each of its codes (the best path) until a word passes."""
    read.decoded = True
    for version in read.codes:
        value, bits = coding.CODES[version].decode(read.soft(key, version))
        value = _accept(key, read, version, value)
        if read.bits is None or value is not None:
            read.bits, read.version, read.value = bits, version, value
        if value is not None:
            return


def _list_viterbi(key: bytes, read: _Read) -> None:
    """List-decode ``read`` under each of its codes until a word passes."""
    read.listed = True
    for version in read.codes:
        code = coding.CODES[version]
        for word in code.list_viterbi_decode(read.soft(key, version)):
            value = _accept(key, read, version, code.check(word))
            if value is not None:
                read.value, read.version, read.bits = value, version, word[:code.payload_bits]
                return


def _decode_best(key: bytes, reads: list[_Read], scorer: _Scorer, fpr_threshold: float,
                 list_decode: bool = True, list_all: bool = False) -> _Read:
    """Viterbi-decode the reads whose sync could make a detection (each once); list-decode the best one if
    none passed (and ``list_decode``), or every such read, best first, until one passes (``list_all``: the
    bound charges every read for a whole list anyway, scoring.WORDS_CHECKED)."""
    for read in reads:
        if not read.decoded and _could_pass(scorer.log10_fpp(read.alignment.z, True), fpr_threshold):
            _viterbi(key, read)
    best = max(reads, key=lambda r: (r.value is not None, r.alignment.z))
    if not list_decode or best.value is not None:
        return best
    for read in sorted(reads, key=lambda r: -r.alignment.z)[:None if list_all else 1]:
        if not read.listed and _could_pass(scorer.log10_fpp(read.alignment.z, True), fpr_threshold):
            _list_viterbi(key, read)
            if read.value is not None:
                return read
    return best


def _reads_v1(hypotheses: list[v2.Hypothesis], pyramid: v2.Pyramid, key: bytes, folds: dict,
              codes: tuple[int, ...] = (1,)) -> list[_Read]:
    layout = keyed_layout(key)
    reads = []
    for hypothesis in hypotheses:
        folded = _fold_cached(pyramid, hypothesis, folds)
        alignment = align_spectrum(folded.spectrum, layout, folded.periods)
        reads.append(_Read(hypothesis, alignment, codes))
    return reads


def _reads_v2(hypotheses: list[v2.Hypothesis], pyramid: v2.Pyramid, key: bytes, folds: dict,
              codes: tuple[int, ...] = (2,), refine: int = v2.REFINED) -> list[_Read]:
    reads = []
    for hypothesis in hypotheses:
        folded = _fold_cached(pyramid, hypothesis, folds)
        match = v2.search(folded.spectrum, key, folded.periods, refine)
        reads.append(_Read(hypothesis, match.alignment, codes, dihedral=match.dihedral, variant=match.variant))
    return reads


class _Folded:
    """One hypothesis's folded tile, how many periods it summed, and its whitened spectrum (computed once: both
    codec versions read it)."""

    def __init__(self, tile: np.ndarray, periods: float):
        self.tile, self.periods = tile, periods

    @cached_property
    def spectrum(self) -> np.ndarray:
        return whitened_spectrum(self.tile)


def _fold_cached(pyramid: v2.Pyramid, hypothesis: v2.Hypothesis, folds: dict) -> _Folded:
    ident = (hypothesis.level, hypothesis.lattice.v1, hypothesis.lattice.v2)
    if ident not in folds:
        folds[ident] = _Folded(*fold(pyramid.residual(hypothesis.level), hypothesis.lattice))
    return folds[ident]


def analyse(image: np.ndarray, key: bytes, fpr_threshold: float = DEFAULT_FPR,
            lattices: list[Lattice] | None = None, versions: tuple[int, ...] = VERSIONS) -> Analysis:
    """Run the detector and return its working: the best hypothesis, CRC-valid ones first, then by sync z.

    Each lattice hypothesis is folded and aligned (v1: one sync pattern; v2: every variant under every
    dihedral transform, see codec_v2); those whose sync is strong enough for a CRC pass to meet
    ``fpr_threshold`` are Viterbi-decoded. If none passes, the one with the best sync is list-decoded.
    The unscaled embedding grids are tried first (an uncropped or cropped, unresized image: most
    verifications), then the lattices of the autocorrelation search, then (v2 and v3) the neighbours of the
    lattice whose sync read best (a thumbnail's period is finer than the autocorrelation resolves); versions in
    the order given; the search stops at the first detection. The false-positive bound counts every hypothesis
    that could have been tried. Given ``lattices``, only those are tried.
    (``bits`` of a hypothesis too weak to decode come from its Viterbi path all the same, for diagnostics.)
    """
    key, versions, pyramid = _prepare(image, key, versions)
    return _analyse(pyramid, key, fpr_threshold, lattices, versions)


def _prepare(image: np.ndarray, key: bytes, versions: tuple[int, ...]) -> tuple[bytes, tuple[int, ...], v2.Pyramid]:
    """The checked key and versions (duplicates dropped), and the pyramid of ``image``'s luma: what every search
    of one picture shares."""
    key = _check_key(key)
    versions = tuple(dict.fromkeys(versions))
    if not versions or any(v not in VERSIONS for v in versions):
        raise InvalidInputError(f"unknown watermark codec version(s) {versions}; known: {VERSIONS}")
    _, colour = split(image, "detect")
    check_size(colour, MIN_DETECT_SIDE, "detect")
    tune_allocator(export=False)  # see the module docstring: the codec is allocation-bound
    return key, versions, v2.Pyramid(luma(colour))


def _counts(pyramid: v2.Pyramid, lattices: list[Lattice] | None) -> dict[int, int]:
    """The hypotheses each search family could try on ``pyramid`` (the false-positive bound's H)."""
    level0 = len(lattices) if lattices is not None else HYPOTHESES_V1
    counts = {1: level0, 2: v2.hypothesis_count(pyramid, level0)}
    if lattices is None:
        counts[2] += NEIGHBOURS  # the second look (``_second_look``)
    return counts


def _analyse(pyramid: v2.Pyramid, key: bytes, fpr_threshold: float, lattices: list[Lattice] | None,
             versions: tuple[int, ...]) -> Analysis:
    """``analyse`` on a prepared picture (``_prepare``)."""
    given = lattices is not None
    counts = _counts(pyramid, lattices)
    families = _families(versions)
    scorers = {f: _Scorer(f, counts[f], len(families), len(codes)) for f, codes in families.items()}
    reads: dict[int, list[_Read]] = {f: [] for f in families}
    folds: dict = {}
    for phase in ("grids", "lattices", "neighbours"):
        if phase == "lattices" and not given:
            lattices = estimate_lattices(pyramid.residual(0))
        for family, codes in families.items():
            if phase == "neighbours":
                if family == 1 or given or not reads[family]:
                    continue
                reads[family] += _second_look(max(reads[family], key=lambda r: r.alignment.z), pyramid, key)
                best = _decode_best(key, reads[family], scorers[family], fpr_threshold, list_all=True)
            else:
                new = _phase_hypotheses(family, phase, pyramid, lattices if given or phase == "lattices" else None)
                new = [h for h in new if all(h != r.hypothesis for r in reads[family])]
                if not new:
                    continue
                reads[family] += (_reads_v1 if family == 1 else _reads_v2)(new, pyramid, key, folds, codes)
                best = _decode_best(key, reads[family], scorers[family], fpr_threshold)
            if best.value is not None and scorers[family].log10_fpp(best.alignment.z, True) <= math.log10(
                    fpr_threshold):
                return _analysis(key, best, scorers[family], counts[family])
        if given:
            break
    finals = [(_decode_best(key, reads[f], scorers[f], fpr_threshold), f) for f in families if reads[f]]
    best, family = min(finals, key=lambda bf: scorers[bf[1]].log10_fpp(bf[0].alignment.z, bf[0].value is not None))
    return _analysis(key, best, scorers[family], counts[family])


def _phase_hypotheses(family: int, phase: str, pyramid: v2.Pyramid,
                      lattices: list[Lattice] | None) -> list[v2.Hypothesis]:
    """The hypotheses of one phase of a search (``_family``): the unscaled grids ('grids'), or those of the
    lattice search."""
    if lattices is None:  # the unscaled grids: v1's 64 px tile; the carrier's 64 px and (half level) 128 px tiles
        grids = [v2.Hypothesis(IDENTITY, 0)]
        if family == 2 and pyramid.has_half_level():
            grids.append(v2.Hypothesis(IDENTITY, 1))
        return grids
    if family == 1:
        return [v2.Hypothesis(lattice, 0) for lattice in lattices]
    return v2.hypotheses(pyramid, lattices)


def _second_look(best: _Read, pyramid: v2.Pyramid, key: bytes) -> list[_Read]:
    """v2's last phase: the neighbours of the lattice whose sync read best (``lattice.neighbours``), folded from
    one warp (``folding.fold_stretched``) and each read with that read's sync pattern only (its dihedral
    transform and variant).

    The bound counts each neighbour as a whole hypothesis (every pattern): the pattern was chosen on the data, on
    a fold nearly the same as the neighbour's, so counting one pattern per neighbour would not be conservative
    (it doubled the unmarked samples at sync p <= 0.001 in the false-positive benchmark)."""
    lattice, level = best.hypothesis.lattice, best.hypothesis.level
    stretches = neighbour_stretches()
    if not stretches:
        return []
    spectra, periods = fold_stretched(pyramid.residual(level), lattice, stretches)
    alignments = align_spectra(carrier.dihedral(whiten(spectra), best.dihedral), carrier.layout(key, best.variant),
                               list(periods))
    return [_Read(v2.Hypothesis(lattice.stretched(f1, f2), level), alignment, best.codes, dihedral=best.dihedral,
                  variant=best.variant) for (f1, f2), alignment in zip(stretches, alignments, strict=True)]


def _analysis(key: bytes, best: _Read, scorer: _Scorer, count: int) -> Analysis:
    log_fpp = scorer.log10_fpp(best.alignment.z, best.value is not None)
    code = coding.CODES[best.version]
    bits = coding.int_to_bits(best.value, code.payload_bits) if best.value is not None else (
        best.bits if best.bits is not None else code.decode(best.soft(key, best.version))[1])
    return Analysis(best.hypothesis.native(), best.alignment, best.value, bits, count, log_fpp,
                    version=best.version, level=best.hypothesis.level, dihedral=best.dihedral,
                    variant=best.variant)


def detect(image: np.ndarray, key: bytes, fpr_threshold: float = DEFAULT_FPR, *, localise: bool = False,
           versions: tuple[int, ...] = VERSIONS) -> Detection:
    """Look for a mark made with ``key`` (blind: no original needed), by any codec version in ``versions``.

    ``image``: HxW, HxWx1, HxWx3 or HxWx4 (alpha ignored), uint8/uint16 or float in 0..1, at least
    ``MIN_DETECT_SIDE`` px a side. ``found`` is True only when the payload passed its CRC (and, for v2, its
    nonce check) *and* the calibrated false-positive probability (the chance that an unmarked image scores
    this high, corrected for every version, lattice, transform, variant and shift tried) is at most
    ``fpr_threshold``. ``score`` is -log10 of that probability. ``details``: version, scale_x, scale_y,
    rotation_deg, shear_deg (the geometry found, relative to a 64 px tile), period_px, offset_px (where the
    tile origin lies in the image), mirrored, sync_z, periods (tiles folded), hypotheses, crc_ok.
    ``localise``: also map where the mark is (``presence``; None when nothing was found).
    """
    if not 0.0 < fpr_threshold < 1.0:
        raise InvalidInputError(f"fpr_threshold must be in (0, 1), got {fpr_threshold}")
    key, versions, pyramid = _prepare(image, key, versions)
    analysis = _analyse(pyramid, key, fpr_threshold, None, versions)
    found = analysis.payload is not None and analysis.log10_fpp <= math.log10(fpr_threshold)
    region = None
    if localise and not found:
        regional = _analyse_regions(pyramid, key, fpr_threshold, versions)
        if regional is not None:
            (analysis, region), found = regional, True
    details = _details(key, analysis, found)
    if region is not None:
        details["region_px"] = region
    presence = presence_map(image, key, analysis) if localise and found else None
    return Detection(found=found, payload=analysis.payload if found else None,
                     false_positive_probability=10.0**analysis.log10_fpp, score=-analysis.log10_fpp,
                     details=details, version=analysis.version if found else 0, presence=presence)


def _details(key: bytes, analysis: Analysis, found: bool) -> dict[str, Any]:
    """``Detection.details`` of an analysis (see ``detect``)."""
    lattice, alignment = analysis.lattice, analysis.alignment
    offset = lattice.matrix() @ np.array(alignment.shift)
    return {
        "version": analysis.version,
        **lattice.describe(),
        "period_px": (float(np.hypot(*lattice.v1)), float(np.hypot(*lattice.v2))),
        "offset_px": (float(offset[0]), float(offset[1])),
        "mirrored": bool(found and analysis.version != 1 and _odd(analysis.dihedral)
                         != _odd(carrier.nonce(_check_key(key), analysis.payload, analysis.version).dihedral)),
        "sync_z": float(alignment.z),
        "periods": float(alignment.periods),
        "hypotheses": analysis.hypotheses,
        "crc_ok": analysis.payload is not None,
    }


def analyse_regions(image: np.ndarray, key: bytes, fpr_threshold: float = DEFAULT_FPR,
                    versions: tuple[int, ...] = VERSIONS) -> tuple[Analysis, tuple[int, int, int]] | None:
    """A v2/v3 mark in one square window of ``image`` (regions.windows) where the whole-image read found none: a
    marked region pasted into unmarked material. Each window is folded alone on the unscaled grids (64 px; the
    128 px one where the window's corner is on the half level's grid) and read like a crop. Returns the
    analysis of the best window that meets ``fpr_threshold``, and that window (top, left, side), or None.

    The bound counts every hypothesis of the whole-image search (``analyse``) *and* every window's, so a region
    read needs a higher sync than a whole-image one (about +0.4 z for 169 windows); an unmarked picture passes
    both stages, so a ``detect(..., localise=True)`` call can report a false ID with probability at most twice
    ``fpr_threshold``. v1 marks are not looked for in windows."""
    if not 0.0 < fpr_threshold < 1.0:
        raise InvalidInputError(f"fpr_threshold must be in (0, 1), got {fpr_threshold}")
    key, versions, pyramid = _prepare(image, key, versions)
    return _analyse_regions(pyramid, key, fpr_threshold, versions)


def _analyse_regions(pyramid: v2.Pyramid, key: bytes, fpr_threshold: float,
                     versions: tuple[int, ...]) -> tuple[Analysis, tuple[int, int, int]] | None:
    """``analyse_regions`` on a prepared picture (``_prepare``): the windows fold its residuals."""
    families = _families(versions)
    layout = windows(*pyramid.y.shape)
    if 2 not in families or not layout:
        return None
    whole = _counts(pyramid, None)[2]  # the whole-image search's family-2 bound
    reads: list[_Read] = []
    window_of: dict[int, tuple[int, int, int]] = {}
    for top, left, side in layout:
        grids = [v2.Hypothesis(IDENTITY, 0)]
        if top % (2 * PERIOD) == 0 and left % (2 * PERIOD) == 0 and side >= 4 * PERIOD:
            grids.append(v2.Hypothesis(IDENTITY, 1))  # the 128 px tile: two periods a side at the half level
        for read in _reads_v2(grids, pyramid.window(top, left, side), key, {}, families[2]):
            reads.append(read)
            window_of[id(read)] = (top, left, side)
    count = whole + len(reads)
    scorer = _Scorer(2, count, len(families), len(families[2]))
    best = _decode_best(key, reads, scorer, fpr_threshold)
    if best.value is None or scorer.log10_fpp(best.alignment.z, True) > math.log10(fpr_threshold):
        return None
    return _analysis(key, best, scorer, count), window_of[id(best)]


def _odd(k: int) -> bool:
    """Whether dihedral transform ``k`` is a mirror (an odd number of reflections)."""
    return bin(k).count("1") % 2 == 1


def is_marked(image: np.ndarray, key: bytes) -> bool:
    """True when ``detect`` finds a mark made with ``key`` at the default threshold."""
    return detect(image, key).found


# ---------------------------------------------------------------------------------------------------- embed


def _existing_payload(y: np.ndarray, key: bytes, texture: np.ndarray) -> int | None:
    """Payload of a same-key mark on the embedding grid (a previous output of ``embed``), if any.

    Looks at a central, period-aligned window of EXISTING_WINDOW px only: plenty of periods, constant cost.
    v1, and v2 at either tile period, are looked for on the unscaled grid. ``texture``: texture_rms(y).
    """
    h, w = y.shape
    top = max(0, (h - EXISTING_WINDOW) // 2) // (2 * PERIOD) * (2 * PERIOD)
    left = max(0, (w - EXISTING_WINDOW) // 2) // (2 * PERIOD) * (2 * PERIOD)
    window = texture[top // BLOCK:(top + EXISTING_WINDOW) // BLOCK, left // BLOCK:(left + EXISTING_WINDOW) // BLOCK]
    pyramid = v2.Pyramid(y[top:top + EXISTING_WINDOW, left:left + EXISTING_WINDOW], texture=window)
    grids = [v2.Hypothesis(IDENTITY, 0)] + ([v2.Hypothesis(IDENTITY, 1)] if pyramid.has_half_level() else [])
    folds: dict = {}
    families = _families(VERSIONS)
    for family in (1, 2):
        codes = families[family]
        reads = (_reads_v1(grids[:1], pyramid, key, folds) if family == 1
                 else _reads_v2(grids, pyramid, key, folds, codes, refine=1))
        scorer = _Scorer(family, len(reads), len(families), len(codes))
        best = _decode_best(key, reads, scorer, DEFAULT_FPR, list_decode=False)  # a quick look, as in v1
        if best.value is not None and scorer.log10_fpp(best.alignment.z, True) <= math.log10(DEFAULT_FPR):
            return best.value
    return None


def embed(image: np.ndarray, payload: int, key: bytes, strength: float = 1.0,
          version: int | None = None) -> np.ndarray:
    """Return a new array like ``image`` carrying ``payload`` (0 .. 2**64-1; v3: 0 .. 2**40-1) under ``key``.

    ``image``: HxW gray, HxWx3 RGB or HxWx4 RGBA (alpha copied untouched), uint8/uint16 or float32/64 in
    0..1 (floats outside 0..1 are clipped), width and height at least ``MIN_SIDE`` px (else
    ``ImageTooSmallError``). The input is never modified. ``strength`` scales the mark (1.0 keeps PSNR >= 40
    dB; up to ``MAX_STRENGTH``). ``key``: at least 16 secret bytes. ``version``: the codec version to write
    (1: one keyed tile for every image; 2: a per-image carrier, see carrier.py; 3: v2's carrier with a 40-bit
    ID, which reads where v2's 64-bit one has too few bits left); None: ``DEFAULT_VERSION`` when the payload
    fits it, else 2. Re-marking policy: see the module docstring (same payload: unchanged copy; different
    payload: ``AlreadyWatermarkedError``; marks of every version count).
    """
    payload = _check_payload(payload, PAYLOAD_BITS)
    if version is None:
        version = DEFAULT_VERSION if payload < 1 << payload_bits(DEFAULT_VERSION) else 2
    payload = _check_payload(payload, payload_bits(version), version)
    key = _check_key(key)
    if not 0.0 < float(strength) <= MAX_STRENGTH:
        raise InvalidInputError(f"strength must be in (0, {MAX_STRENGTH}], got {strength}")
    arr, colour = split(image, "embed")
    check_size(colour, MIN_SIDE, "embed")
    tune_allocator(export=False)  # see the module docstring: the codec is allocation-bound
    y = luma(colour)
    texture = texture_rms(y)  # shared by the re-marking check and the amplitude
    existing = _existing_payload(y, key, texture)
    if existing == payload:
        return arr.copy()
    if existing is not None:
        raise AlreadyWatermarkedError(
            f"the image already carries watermark ID {existing} under this key; a second mark would make "
            f"both unreadable. Embed ID {payload} into the unmarked original instead.",
            existing_payload=existing,
        )
    w = y.shape[1]
    coded = coding.CODES[version].encode(payload)
    if version == 1:
        tile, period, shaping = keyed_layout(key).tile(coded), PERIOD, V1_SHAPING
    else:
        mark = carrier.nonce(key, payload, version)
        tile, shaping = carrier.image_tile(key, coded, mark, y, version), carrier.SHAPING
        period = tile.shape[0]
    pattern = np.tile(tile, (max(1, STRIPE // period), -(-w // period)))[:, :w]  # one stripe's rows
    amplitude = amplitude_map(y, float(strength), shaping, texture)
    out = _add_mark(arr, colour, pattern, amplitude)
    if version != 1 and strength <= 1.0:  # the carrier promises the PSNR on every image: headroom shifts, rounding
        excess = MIN_PSNR - _psnr(arr, out)
        for _ in range(3):
            if excess <= 0:
                break
            amplitude *= np.float32(10 ** (-(excess + 0.02) / 20))
            out = _add_mark(arr, colour, pattern, amplitude)
            excess = MIN_PSNR - _psnr(arr, out)
    return out


def _add_mark(arr: np.ndarray, colour: np.ndarray, pattern: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    h, stripe = colour.shape[0], pattern.shape[0]
    out = np.empty_like(arr)
    for top in range(0, h, stripe):  # stripes keep every temporary in cache
        rows = slice(top, min(h, top + stripe))
        delta = pattern[: rows.stop - top] * amplitude[rows]
        high, low = extremes(colour[rows])
        delta += headroom_shift(high, low, delta)
        out[rows] = add_to_colour(arr[rows], colour[rows], delta)
    return out


def _psnr(before: np.ndarray, after: np.ndarray) -> float:
    """PSNR (dB, 8-bit scale) over the colour channels (alpha excluded)."""
    channels = 1 if before.ndim == 2 else (1 if before.shape[2] <= 2 else 3)
    a = before.reshape(before.shape[0], before.shape[1], -1)[:, :, :channels]
    b = after.reshape(after.shape[0], after.shape[1], -1)[:, :, :channels]
    if a.dtype == np.uint8:
        mse = cv2.norm(np.ascontiguousarray(a), np.ascontiguousarray(b), cv2.NORM_L2SQR) / a.size
    else:
        mse = float(np.mean(np.square(to_levels(a) - to_levels(b), dtype=np.float32), dtype=np.float64))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
