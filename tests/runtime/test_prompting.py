"""The prompt composer: every style and composition preset, the 77-token CLIP window, presets files."""

from __future__ import annotations

import json
import re

import pytest

from comfyui_backdrop.runtime.backdrop.styles import load_styles
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.prompting import (
    CLIP_CONTENT,
    ClipTokenCounter,
    EstimatedTokenCounter,
    chunk_prompt,
    compose_prompt,
    composition_names,
    get_composition,
    get_token_counter,
    load_compositions,
)
from tests.fixtures.caption_fixtures import write_clip_tokenizer

CAPTION = "A green glass bottle with a cream label."
SCENE = "on a marble kitchen counter"
LONG_CAPTION = ("a tall green glass bottle with a cream paper label, a cork stopper and embossed lettering, "
                "standing upright, photographed from a slightly low angle with reflections along its shoulder")
REQUIRED_COMPOSITIONS = {"centered", "rule of thirds", "flat lay", "close-up", "lifestyle"}


@pytest.fixture(scope="module")
def clip_counter(tmp_path_factory):
    return ClipTokenCounter(write_clip_tokenizer(tmp_path_factory.mktemp("clip") / "sd1_tokenizer"))


def test_the_required_compositions_ship():
    assert set(composition_names()) >= REQUIRED_COMPOSITIONS
    assert get_composition("Rule-of-Thirds").name == "rule of thirds"
    assert get_composition("FLAT_LAY").name == "flat lay"


@pytest.mark.parametrize("style", list(load_styles()))
def test_every_style_with_every_composition(style):
    preset = load_styles()[style]
    base = load_compositions()
    for name in composition_names():
        composition = get_composition(name)
        result = compose_prompt(CAPTION, style, name, SCENE)
        fragments = result.positive.split(", ")
        assert fragments[:2] == ["A green glass bottle with a cream label", SCENE]
        for fragment in (*preset.prompt, *composition.prompt, *base.base_prompt):
            assert fragment in fragments, (style, name, fragment)
        negatives = result.negative.split(", ")
        for fragment in (*preset.negative, *composition.negative, *base.base_negative):
            assert fragment in negatives
        assert len({f.lower() for f in fragments}) == len(fragments), "duplicate fragments"
        assert len({f.lower() for f in negatives}) == len(negatives), "duplicate negative fragments"
        assert result.positive_tokens == EstimatedTokenCounter().count(result.positive)
        assert (result.positive_tokens > CLIP_CONTENT) == any("positive prompt" in w for w in result.warnings)


@pytest.mark.parametrize("style", list(load_styles()))
def test_trim_fits_every_preset_into_the_clip_window(style, clip_counter):
    for name in composition_names():
        for counter in (EstimatedTokenCounter(), clip_counter):
            result = compose_prompt(LONG_CAPTION, style, name, SCENE, "a bright kitchen with white tiles",
                                    long_prompt="trim", counter=counter)
            assert counter.count(result.positive) <= CLIP_CONTENT
            assert counter.count(result.negative) <= CLIP_CONTENT
            assert result.positive.startswith("a tall green")
            assert not any("more than the 77-token window" in w for w in result.warnings)
            if result.dropped:
                assert any(w.startswith("trimmed to 75 tokens") for w in result.warnings)


def test_trim_drops_the_least_important_fragments_first():
    result = compose_prompt(LONG_CAPTION, "Glam", "lifestyle", SCENE, "a dim room with velvet curtains",
                            long_prompt="trim")
    first_dropped = result.dropped[0]
    assert first_dropped in load_compositions().base_prompt[1:]  # extra base fragments go first
    assert SCENE in result.positive and "glamorous luxury set" in result.positive


def test_overlong_prompts_warn_and_name_where_truncation_starts():
    result = compose_prompt(LONG_CAPTION, "Holiday Cheer", "lifestyle", SCENE, "a cosy living room " * 5)
    assert result.positive_tokens > CLIP_CONTENT
    warning = next(w for w in result.warnings if "positive prompt" in w)
    assert "77-token window" in warning and "CLIPTextEncode" in warning and "ignore everything from" in warning
    assert "positive:" in result.report() and warning in result.report()


def test_captions_are_cleaned_but_the_scene_is_verbatim():
    result = compose_prompt("A mug (ceramic) [red] {a|b}.\nOn a table.", "Minimal Studio", "centered",
                            "(wooden table:1.3), morning")
    assert result.positive.startswith("A mug ceramic red a b. On a table, (wooden table:1.3), morning,")
    assert compose_prompt("", "Glam", "close-up").positive.startswith("close-up shot")


def test_real_clip_tokenizer_counts_exactly(clip_counter, tmp_path, monkeypatch):
    assert clip_counter.exact and clip_counter.count("ab, c") == 4  # char-level vocab: one token per character
    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(write_clip_tokenizer(tmp_path / "tok")))
    counter = get_token_counter()
    assert counter.exact and counter.count("abc d") == 4
    monkeypatch.delenv("BACKDROP_CLIP_TOKENIZER")
    assert not get_token_counter().exact
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="not a CLIP tokenizer folder"):
        get_token_counter(tmp_path / "empty")


def test_estimate_counts_words_digits_and_punctuation():
    counter = EstimatedTokenCounter()
    assert counter.count("soft light") == 2
    assert counter.count("soft, light.") == 4
    assert counter.count("2024") == 4
    assert counter.count("photographers") > 1


def test_chunks_respect_the_limit_and_fragment_boundaries(clip_counter):
    prompt = compose_prompt(LONG_CAPTION, "Terracotta", "flat lay", SCENE).positive
    chunks = chunk_prompt(prompt, clip_counter, limit=40)
    assert len(chunks) > 1 and all(clip_counter.count(c) <= 40 for c in chunks)
    assert re.findall(r"[^\s,]+", ", ".join(chunks)) == re.findall(r"[^\s,]+", prompt)
    assert chunk_prompt("short, prompt", clip_counter) == ["short, prompt"]
    long_word_run = " ".join(["word"] * 40)
    assert all(clip_counter.count(c) <= 30 for c in chunk_prompt(long_word_run, clip_counter, limit=30))


def test_compositions_file_can_be_replaced_and_is_validated(tmp_path, monkeypatch):
    own = tmp_path / "compositions.json"
    own.write_text(json.dumps({"base": {"prompt": ["studio shot"], "negative": ["noise"]},
                               "compositions": [{"name": "Hero", "prompt": ["low angle hero shot"],
                                                 "negative": ["flat"]}]}), encoding="utf-8")
    monkeypatch.setenv("BACKDROP_COMPOSITIONS_FILE", str(own))
    assert composition_names() == ["Hero"]
    result = compose_prompt("a shoe", "Glam", "hero")
    assert "low angle hero shot" in result.positive and result.negative.endswith("flat, noise")

    bad = tmp_path / "bad.json"
    for content in ("{not json", json.dumps({"compositions": []}),
                    json.dumps({"compositions": [{"name": "a"}, {"name": "A"}]})):
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(InvalidInputError, match=r"bad\.json"):
            load_compositions(bad)


def test_unknown_names_and_modes_are_clear_errors():
    with pytest.raises(InvalidInputError, match="unknown composition 'diagonal'"):
        compose_prompt(CAPTION, "Glam", "diagonal")
    with pytest.raises(InvalidInputError, match="unknown style"):
        compose_prompt(CAPTION, "Vaporwave", "centered")
    with pytest.raises(InvalidInputError, match="long_prompt"):
        compose_prompt(CAPTION, "Glam", "centered", long_prompt="chunk")
