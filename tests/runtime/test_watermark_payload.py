"""Payload coding: CRC, convolutional code with (list) Viterbi decoding."""

from __future__ import annotations

import numpy as np

from comfyui_backdrop.runtime.watermark import payload as coding


def signs(bits: np.ndarray) -> np.ndarray:
    return 1.0 - 2.0 * bits.astype(np.float64)


def test_crc16_matches_the_ccitt_false_check_value():
    message = np.unpackbits(np.frombuffer(b"123456789", dtype=np.uint8))
    assert coding.crc16(message) == 0x29B1


def test_bit_helpers_round_trip():
    for value in (0, 1, 0xDEADBEEF, 2**64 - 1):
        assert coding.bits_to_int(coding.int_to_bits(value, 64)) == value


def test_noiseless_round_trip_and_length():
    for value in (0, 42, 2**63 + 5, 2**64 - 1):
        coded = coding.encode(value)
        assert coded.shape == (coding.CODED_BITS,) and set(np.unique(coded)) <= {0, 1}
        assert coding.decode(signs(coded))[0] == value


def test_corrects_noise_and_hard_errors():
    rng = np.random.default_rng(7)
    for _ in range(20):
        value = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        coded = signs(coding.encode(value))
        assert coding.decode(coded + rng.normal(0.0, 1.0, coded.size))[0] == value  # 0 dB per coded bit
        flipped = coded.copy()
        flipped[rng.choice(coded.size, 60, replace=False)] *= -1                      # 11% hard errors
        assert coding.decode(flipped)[0] == value


def test_noise_never_passes_the_crc():
    rng = np.random.default_rng(8)
    assert all(coding.decode(rng.normal(size=coding.CODED_BITS))[0] is None for _ in range(200))
    assert all(coding.list_decode(rng.normal(size=coding.CODED_BITS)) is None for _ in range(8))


def test_list_decoding_recovers_words_the_viterbi_path_misses():
    rng = np.random.default_rng(9)
    plain = listed = wrong = 0
    for _ in range(24):
        value = int(rng.integers(0, 2**62))
        soft = signs(coding.encode(value)) * 0.5 + rng.normal(size=coding.CODED_BITS)
        plain += coding.decode(soft)[0] == value
        result = coding.list_decode(soft)
        listed += result == value
        wrong += result is not None and result != value
    assert listed > plain and wrong == 0


def test_list_viterbi_best_path_is_the_viterbi_path():
    rng = np.random.default_rng(10)
    soft = signs(coding.encode(123)) * 0.4 + rng.normal(size=coding.CODED_BITS)
    words = coding.list_viterbi_decode(soft, 8)
    assert words.shape == (8, coding.INFO_BITS)
    assert np.array_equal(words[0], coding.viterbi_decode(soft))
    assert len({w.tobytes() for w in words}) == 8
