"""How many bits could an attacked mark still carry? The payload capacity of the watermark channel (issue 19).

    .venv/bin/python benchmarks/watermark_capacity.py [--attack NAME ...] [--version 2] [--quick]

For each benchmark image (bench_watermark.py's 25) and attack, the image is marked with a known ID, attacked and
read by the detector (``analyse``). The payload chips at the detector's best alignment, signed by the true coded
bits, are each ``a + noise`` (a > 0 when the chip reads right); their mean and spread give the chip SNR, and the
capacity of that binary-input Gaussian channel (soft decisions, Gauss-Hermite quadrature) times the number of
payload chips is the most information any code could carry through this embedder, attack and detector. The
codeword carries ``payload.INFO_BITS`` = 80 bits (the 64-bit ID and its CRC-16): where the capacity is below that,
no channel code (the convolutional code here or any other) can read the mark; only a shorter payload, a stronger
mark (a lower PSNR) or a detector that extracts more of it could. A read whose alignment is wrong (the sync was not
found) shows a chip SNR of about zero and no capacity. The finite-length column is the normal approximation to
what a code of that many chips carries when it may fail one read in a hundred: context for how close to capacity
a code of this length can get (reads do succeed below it, by luck), not a verdict.

Prints a markdown table per attack. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make benchmarks.* and tests.* importable
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_watermark import ATTACKS, KEY, bench_images, payload_for  # noqa: E402
from comfyui_backdrop.runtime.engines.precision import cpu_info  # noqa: E402
from comfyui_backdrop.runtime.watermark import carrier, codec  # noqa: E402
from comfyui_backdrop.runtime.watermark import payload as coding  # noqa: E402
from comfyui_backdrop.runtime.watermark.pattern import keyed_layout  # noqa: E402

DEFAULT_ATTACKS = ("crop 10% area", "crop 25% + scale 0.5 + JPEG 60")
FAILURE_RATE = 0.01  # word error rate of the finite-length bound: a read that fails one time in a hundred
NO_MARK_BITS = 8.0   # under this capacity the chips carry no mark: the sync was not found (a wrong alignment)
SHORTER_WORDS = (56, 48)  # codewords of a shorter ID + CRC-16 (40- and 32-bit IDs), for the summary
_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(80)


def bpsk_information(snr: float) -> tuple[float, float]:
    """Capacity C (bits per use) and dispersion V (bits^2) of a +/-1 input Gaussian channel at signal-to-noise
    ratio ``snr`` (a^2 / sigma^2), soft output: the mean and variance of the information density
    i = 1 - log2(1 + exp(-2 snr - 2 sqrt(snr) n)), n ~ N(0, 1), by Gauss-Hermite quadrature.
    C is 0 at snr 0, 0.486 at 0 dB and approaches 1 as the snr grows."""
    if not snr > 0:
        return 0.0, 0.0
    noise = math.sqrt(2.0) * _NODES
    density = 1.0 - np.logaddexp(0.0, -2.0 * snr - 2.0 * math.sqrt(snr) * noise) / math.log(2.0)
    weights = _WEIGHTS / math.sqrt(math.pi)
    capacity = float(np.dot(weights, density))
    return max(0.0, capacity), float(np.dot(weights, (density - capacity) ** 2))


def finite_length_bits(snr: float, uses: int, error: float = FAILURE_RATE) -> float:
    """The most bits a code of ``uses`` channel uses can carry with a word error rate of ``error`` (Polyanskiy,
    Poor and Verdu's normal approximation: n C - sqrt(n V) Q^-1(error) + log2(n) / 2)."""
    capacity, dispersion = bpsk_information(snr)
    if capacity <= 0:
        return 0.0
    penalty = math.sqrt(uses * dispersion) * statistics.NormalDist().inv_cdf(1.0 - error)
    return min(uses * capacity, max(0.0, uses * capacity - penalty + 0.5 * math.log2(uses)))


def signed_payload_chips(analysis: codec.Analysis, payload: int, version: int) -> np.ndarray:
    """The payload chips at the detector's alignment times the sign the true ID (marked with codec ``version``)
    gives them (> 0: read right)."""
    layout = keyed_layout(KEY) if version == 1 else carrier.layout(KEY, analysis.variant, version)
    coded = coding.CODES[version].encode(payload)
    chips = analysis.alignment.chips.reshape(-1)[layout.payload_index]
    return chips * layout.payload_signs * (1.0 - 2.0 * coded[layout.payload_bit])


def channel(signed: np.ndarray) -> dict:
    """Chip error rate, chip SNR, capacity and finite-length limit (bits over all payload chips) of one read's
    signed chips."""
    mean, spread = float(signed.mean()), float(signed.std()) + 1e-12
    snr = max(mean, 0.0) ** 2 / spread**2
    return {"chip_errors": float(np.mean(signed < 0)), "snr_db": 10 * math.log10(snr) if snr > 0 else -math.inf,
            "capacity_bits": bpsk_information(snr)[0] * signed.size,
            "finite_length_bits": finite_length_bits(snr, signed.size), "chips": int(signed.size)}


def measure(attack: str, images: list[tuple[str, np.ndarray]], version: int) -> list[dict]:
    rows = []
    for index, (name, image) in enumerate(images):
        value = payload_for(index, codec.payload_bits(version))
        marked = codec.embed(image, value, KEY, version=version)
        analysis = codec.analyse(ATTACKS[attack](marked), KEY)
        signed = signed_payload_chips(analysis, value, version)
        rows.append({"image": name, "read": analysis.payload == value, "sync_z": analysis.alignment.z,
                     "word_bits": coding.CODES[version].info_bits, **channel(signed)})
    return rows


def _verdict(row: dict) -> str:
    if row["read"]:
        return "read"
    if row["capacity_bits"] < NO_MARK_BITS:
        return "sync lost"
    if row["capacity_bits"] < row["word_bits"]:
        return f"beyond capacity (< {row['word_bits']} bits)"
    return "within capacity, not decoded"


def report(attack: str, rows: list[dict]) -> str:
    lines = [f"### {attack}", "", "| image | sync z | chip errors | chip SNR dB | capacity bits | "
             f"finite-length bits ({FAILURE_RATE:g} failures) | outcome |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['image']} | {row['sync_z']:.2f} | {row['chip_errors']:.3f} | {row['snr_db']:.1f} | "
                     f"{row['capacity_bits']:.0f} | {row['finite_length_bits']:.0f} | {_verdict(row)} |")
    verdicts = [_verdict(row) for row in rows]
    summary = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
    fits = ", ".join(f"{sum(row['capacity_bits'] >= bits for row in rows)} for {bits} bits"
                     for bits in dict.fromkeys((rows[0]["word_bits"], coding.INFO_BITS, *SHORTER_WORDS)))
    return "\n".join([*lines, "", f"{len(rows)} images: {summary}. Capacity covers a codeword on {fits}."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="watermark_capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS), metavar="NAME",
                        help=f"an attack of bench_watermark.py (repeatable; default: {', '.join(DEFAULT_ATTACKS)})")
    parser.add_argument("--version", type=int, choices=codec.VERSIONS, default=codec.DEFAULT_VERSION)
    parser.add_argument("--quick", action="store_true", help="bench_watermark's quick image set")
    args = parser.parse_args(argv)
    images = bench_images(args.quick)
    code = coding.CODES[args.version]
    print(f"{cpu_info().describe()}\ncodec v{args.version}, {len(images)} images, a codeword carries "
          f"{code.info_bits} bits ({code.payload_bits}-bit ID + CRC-{coding.CRC_BITS})\n")
    for attack in args.attack or DEFAULT_ATTACKS:
        print(report(attack, measure(attack, images, args.version)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
