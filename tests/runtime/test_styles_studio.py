import json

import numpy as np
import pytest

from comfyui_backdrop.runtime.backdrop.composite import composite_product
from comfyui_backdrop.runtime.backdrop.studio import StudioOptions, render_studio_backdrop
from comfyui_backdrop.runtime.backdrop.styles import get_style, load_styles, style_names
from comfyui_backdrop.runtime.errors import InvalidInputError


def test_at_least_eight_presets_with_required_ones():
    names = style_names()
    assert len(names) >= 8
    for required in ("Soft Spring", "Glam", "Minimal Studio"):
        assert required in names
    for preset in load_styles().values():
        assert preset.prompt and preset.negative
        assert set(preset.palette) == {"wall", "floor", "accent"}


@pytest.mark.parametrize("alias", ["soft spring", "SOFT_SPRING", "Soft-Spring", "  soft   spring "])
def test_style_lookup_is_forgiving(alias):
    assert get_style(alias).name == "Soft Spring"


def test_unknown_style_lists_the_available_ones():
    with pytest.raises(InvalidInputError, match="Minimal Studio"):
        get_style("vaporwave")


def test_studio_can_use_its_own_presets_file(tmp_path, monkeypatch):
    custom = {"styles": [{"name": "House Style", "prompt": ["our look"], "negative": ["bad"],
                          "palette": {"wall": "#112233", "floor": "#223344", "accent": "#FFFFFF"}}]}
    (tmp_path / "s.json").write_text(json.dumps(custom))
    monkeypatch.setenv("BACKDROP_STYLES_FILE", str(tmp_path / "s.json"))
    assert style_names() == ["House Style"]
    assert get_style("house style").palette["wall"] == pytest.approx((0x11 / 255, 0x22 / 255, 0x33 / 255))


def test_bad_presets_file_is_a_clear_error(tmp_path):
    (tmp_path / "s.json").write_text('{"styles": [{"name": "X", "palette": {"wall": "red"}}]}')
    with pytest.raises(InvalidInputError, match="invalid style entry"):
        load_styles(tmp_path / "s.json")


def _product_alpha(h=120, w=160):
    alpha = np.zeros((h, w), np.float32)
    alpha[30:90, 60:100] = 1.0
    return alpha


def test_backdrop_uses_the_palette_and_is_deterministic():
    style = get_style("Glam")
    a = render_studio_backdrop(120, 160, style, _product_alpha(), StudioOptions(seed=1))
    b = render_studio_backdrop(120, 160, style, _product_alpha(), StudioOptions(seed=1))
    assert a.shape == (120, 160, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    wall = np.asarray(style.palette["wall"])
    assert np.abs(a[5, 80] - wall).max() < 0.12
    spring = render_studio_backdrop(120, 160, get_style("Soft Spring"), _product_alpha())
    assert spring.mean() > a.mean() + 0.3


def test_contact_shadow_sits_under_the_product():
    style = get_style("Minimal Studio")
    alpha = _product_alpha()
    lit = render_studio_backdrop(120, 160, style, alpha, StudioOptions(shadow=0.0, vignette=0.0))
    shaded = render_studio_backdrop(120, 160, style, alpha, StudioOptions(shadow=1.0, vignette=0.0))
    darkening = (lit - shaded).mean(axis=2)
    under_base = darkening[90:94, 65:95].mean()
    far_away = darkening[100:, :20].mean()
    above = darkening[:25, 60:100].mean()
    assert under_base > 0.05 and under_base > 10 * max(far_away, 1e-4) and above < 0.01


def test_empty_mask_gives_a_plain_backdrop_and_options_are_validated():
    style = get_style("Minimal Studio")
    plain = render_studio_backdrop(50, 60, style, np.zeros((50, 60), np.float32))
    assert np.isfinite(plain).all()
    with pytest.raises(InvalidInputError, match="0..1"):
        render_studio_backdrop(50, 60, style, None, StudioOptions(shadow=2.0))
    with pytest.raises(InvalidInputError, match="product mask"):
        render_studio_backdrop(50, 60, style, np.zeros((10, 10), np.float32))


def test_composite_is_exact_where_alpha_is_one_and_never_mutates():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50, 3), dtype=np.float32)
    background = rng.random((40, 50, 3), dtype=np.float32)
    alpha = np.zeros((40, 50), np.float32)
    alpha[10:30, 10:40] = 1.0
    alpha[9, 10:40] = 0.5
    before = (image.copy(), background.copy(), alpha.copy())
    out = composite_product(image, alpha, background)
    assert np.array_equal(out[alpha == 1], image[alpha == 1])
    assert np.array_equal(out[alpha == 0], background[alpha == 0])
    assert np.allclose(out[9, 10:40], 0.5 * image[9, 10:40] + 0.5 * background[9, 10:40])
    for kept, original in zip((image, background, alpha), before, strict=True):
        assert np.array_equal(kept, original)
