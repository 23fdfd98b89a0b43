"""Codec v3: v2's carrier and sync with a 40-bit ID (a 56-bit word instead of 80), the default since stop 28.

v3 reads where v2's longer word has too few bits left (a crop to a tenth of a busy picture, a half-size
recompressed copy of a small one); v2 and v1 marks still read and report their version; the two payload codes
share one search and are both counted in the false-positive bound. Rates over 25 images are in
benchmarks/bench_watermark.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.watermark import carrier, codec, detect, embed
from comfyui_backdrop.runtime.watermark.payload import ID40
from tests.fixtures.watermark_images import crop_area, jpeg, psnr, resize, skimage_photo

KEY = b"watermark-v3-test-key-0123456789"
ID = 0xA5_1234_5678  # 40 bits


def _fit(image: np.ndarray, long_side: int) -> np.ndarray:
    return resize(image, long_side / max(image.shape[:2]))


@pytest.fixture(scope="module")
def busy_small() -> np.ndarray:
    """A busy picture under 1 MP (741 px): v2 lost its crop to a tenth and its half-size JPEG 50."""
    return _fit(skimage_photo("motorcycle"), 741)


@pytest.fixture(scope="module")
def marked(busy_small) -> dict[int, np.ndarray]:
    return {version: embed(busy_small, ID if version == 3 else ID << 20, KEY, version=version) for version in (2, 3)}


def test_v3_is_the_default_for_ids_that_fit_and_v2_takes_longer_ones(busy_small, marked):
    assert codec.DEFAULT_VERSION == 3 and codec.payload_bits(3) == 40 and codec.payload_bits(2) == 64
    assert np.array_equal(embed(busy_small, ID, KEY), marked[3])  # the default: v3, deterministic
    assert detect(embed(busy_small, ID << 20, KEY), KEY).version == 2  # a 60-bit ID needs v2
    with pytest.raises(InvalidInputError, match=r"2\*\*40"):
        embed(busy_small, 1 << 40, KEY, version=3)
    for bad in (True, "3", 4, 3.0 + 0.5):
        with pytest.raises(InvalidInputError, match="version"):
            embed(busy_small, ID, KEY, version=bad)


def test_v3_round_trip_reports_its_version_and_spends_v2s_psnr(busy_small, marked):
    result = detect(marked[3], KEY)
    assert result.found and result.payload == ID and result.version == 3
    assert result.false_positive_probability <= 1e-6
    assert abs(psnr(marked[3], busy_small) - psnr(marked[2], busy_small)) < 0.05  # the same amplitude map
    assert psnr(marked[3], busy_small) >= 40.0


def test_v3_keeps_v2s_sync_and_sends_its_shorter_word_over_the_same_chips():
    v2, v3 = carrier.layout(KEY, 5, 2), carrier.layout(KEY, 5, 3)
    assert np.array_equal(v2.sync_index, v3.sync_index) and np.array_equal(v2.sync_signs, v3.sync_signs)
    assert np.array_equal(v2.payload_index, v3.payload_index)
    counts = np.bincount(v3.payload_bit, minlength=ID40.coded_bits)
    assert ID40.coded_bits == 384 and v3.payload_bit.size == 440
    assert counts.min() == 1 and counts.max() == 2 and (counts == 2).sum() == 440 - 384  # 56 bits sent twice
    assert np.all(np.diff(np.flatnonzero(counts == 2)) >= 6)  # ... spread over the word, not bunched


@pytest.mark.parametrize(("name", "attack"), [
    ("crop to 10%", lambda x: crop_area(x, 0.1, 0.3, 0.6)),
    ("scale 0.5 + JPEG 50", lambda x: jpeg(resize(x, 0.5), 50)),
])
def test_attacks_that_leave_too_few_bits_for_v2_read_under_v3(marked, name, attack):
    result = detect(attack(marked[3]), KEY)
    assert result.found and result.payload == ID and result.version == 3, (name, result.details)


def test_each_word_passes_only_under_its_own_code_and_nonce(marked):
    assert not detect(marked[3], KEY, versions=(2,)).found  # v3's chips do not decode as a v2 word
    assert not detect(marked[2], KEY, versions=(3,)).found
    assert detect(marked[2], KEY, versions=(3, 2)).payload == ID << 20
    assert carrier.nonce(KEY, ID, 3) != carrier.nonce(KEY, ID, 2)  # its own domain


def test_two_payload_codes_double_the_words_checked_not_the_search():
    one = codec._Scorer(2, 9, 2, 1)
    two = codec._Scorer(2, 9, 2, 2)
    assert two.log10_fpp(7.0, True) - one.log10_fpp(7.0, True) == pytest.approx(np.log10(2))
    assert two.log10_fpp(7.0, False) == pytest.approx(one.log10_fpp(7.0, False))


def test_remarking_sees_a_v3_mark(marked):
    assert np.array_equal(embed(marked[3], ID, KEY), marked[3])
    with pytest.raises(codec.AlreadyWatermarkedError) as info:
        embed(marked[3], 77, KEY, version=2)
    assert info.value.existing_payload == ID


def test_v3_ids_are_drawn_40_bits_wide_and_other_widths_are_refused():
    from comfyui_backdrop.runtime.provenance.records import ID_BITS, new_watermark_id

    assert all(0 < new_watermark_id(40) < 2**40 for _ in range(200))
    assert max(new_watermark_id() for _ in range(200)) >= 2**40  # the default stays 63 bits (v1, v2)
    for bits in (0, ID_BITS + 1):
        with pytest.raises(InvalidInputError, match="bits"):
            new_watermark_id(bits)
