"""Positive and negative prompts from a product caption, a style, a composition and free scene text.

Fragments are joined with ", " in a fixed order: product caption, scene, background caption,
composition, style, base. Captions are cleaned (one line, no trailing full stop, no brackets, so a
caption can never turn into ComfyUI emphasis or wildcard syntax); the user's scene text is kept
verbatim, weights included.

**The 77-token CLIP window.** CLIP reads 75 tokens plus start/end. Tokens are counted with a real
CLIP tokenizer when one is available (ComfyUI's ``comfy/sd1_tokenizer``, a folder passed in, or
``$BACKDROP_CLIP_TOKENIZER``), otherwise estimated from words (errs high). ``long_prompt="warn"``
keeps the full prompt and warns (ComfyUI's CLIPTextEncode encodes the rest as further 75-token
chunks; encoders that truncate drop it). ``"trim"`` drops whole fragments, least important first
(extra base/composition/style fragments, the background caption, then the first base/composition/
style fragment), and finally shortens the product caption, then the scene, word by word.
``chunk_prompt`` splits a long prompt at fragment boundaries for encoders that encode chunk by chunk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from .backdrop.styles import StylePreset, get_style, style_key
from .errors import InvalidInputError
from .preset_files import fragments, read_preset_entries

CLIP_WINDOW = 77
CLIP_CONTENT = CLIP_WINDOW - 2  # start and end tokens
DEFAULT_COMPOSITIONS_FILE = Path(__file__).resolve().parent / "presets" / "compositions.json"
COMPOSITIONS_ENV = "BACKDROP_COMPOSITIONS_FILE"
CLIP_TOKENIZER_ENV = "BACKDROP_CLIP_TOKENIZER"
LONG_PROMPT_MODES = ("warn", "trim")


# --------------------------------------------------------------------------------------- compositions

@dataclass(frozen=True)
class Composition:
    name: str
    prompt: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class CompositionPresets:
    base_prompt: tuple[str, ...]
    base_negative: tuple[str, ...]
    compositions: dict[str, Composition]


def compositions_file() -> Path:
    """``$BACKDROP_COMPOSITIONS_FILE`` if set, else the shipped presets/compositions.json."""
    return Path(os.environ.get(COMPOSITIONS_ENV) or DEFAULT_COMPOSITIONS_FILE)


def load_compositions(path: str | os.PathLike | None = None) -> CompositionPresets:
    return _load_compositions(str(Path(path) if path else compositions_file()))


@lru_cache(maxsize=8)
def _load_compositions(path: str) -> CompositionPresets:
    data, entries = read_preset_entries(path, "compositions", "composition")
    base = data.get("base") or {}
    compositions: dict[str, Composition] = {}
    try:
        for entry in entries:
            name = str(entry["name"]).strip()
            if not name or style_key(name) in {style_key(n) for n in compositions}:
                raise ValueError(f"empty or duplicate name {name!r}")
            compositions[name] = Composition(name, fragments(entry.get("prompt", ())),
                                             fragments(entry.get("negative", ())))
        return CompositionPresets(fragments(base.get("prompt", ())), fragments(base.get("negative", ())),
                                  compositions)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"{path}: invalid composition preset: {exc}") from exc


def composition_names(path: str | os.PathLike | None = None) -> list[str]:
    return list(load_compositions(path).compositions)


def get_composition(name: str, path: str | os.PathLike | None = None) -> Composition:
    """Look a composition up by name ("Rule of thirds", "rule-of-thirds"... all match)."""
    presets = load_compositions(path).compositions
    for composition in presets.values():
        if style_key(composition.name) == style_key(name):
            return composition
    raise InvalidInputError(f"unknown composition {name!r}; available: {', '.join(presets)}")


# --------------------------------------------------------------------------------------- token counting

class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, text: str) -> int:
        """CLIP tokens in ``text``, without the start/end tokens."""
        ...


class ClipTokenCounter:
    """Exact counts with a CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json)."""

    exact = True

    def __init__(self, folder: str | os.PathLike) -> None:
        from transformers import CLIPTokenizer

        folder = Path(folder)
        has_files = (folder / "tokenizer.json").is_file() or all(
            (folder / name).is_file() for name in ("vocab.json", "merges.txt"))
        if not has_files:
            raise InvalidInputError(f"{folder} is not a CLIP tokenizer folder: it needs vocab.json + merges.txt "
                                    "(like ComfyUI's comfy/sd1_tokenizer) or tokenizer.json")
        try:
            self._tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # OSError, ValueError... from transformers
            raise InvalidInputError(f"{folder} is not a CLIP tokenizer folder (vocab.json + merges.txt): {exc}"
                                    ) from exc
        self.name = f"CLIP tokenizer {folder.name}"

    def count(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


class EstimatedTokenCounter:
    """A word-based estimate of CLIP BPE tokens that errs on the high side.

    Words up to 7 letters count 1 token, longer ones one more per 4 letters; each digit and each
    punctuation run counts 1 (CLIP splits digits one by one).
    """

    name = "estimate (no CLIP tokenizer available)"
    exact = False
    _PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]+|_+")

    def count(self, text: str) -> int:
        total = 0
        for piece in self._PIECES.findall(text.lower()):
            if piece[0].isalpha():
                total += 1 + max(0, len(piece) - 4) // 4 if len(piece) > 7 else 1
            else:
                total += 1
        return total


@lru_cache(maxsize=4)
def _clip_counter(folder: str) -> ClipTokenCounter:
    return ClipTokenCounter(folder)


def get_token_counter(tokenizer_dir: str | os.PathLike | None = None) -> TokenCounter:
    """The CLIP tokenizer in ``tokenizer_dir`` or ``$BACKDROP_CLIP_TOKENIZER``, else the estimate."""
    folder = tokenizer_dir or os.environ.get(CLIP_TOKENIZER_ENV)
    if folder:
        return _clip_counter(str(Path(folder).expanduser().resolve()))
    return EstimatedTokenCounter()


# --------------------------------------------------------------------------------------- composing

@dataclass(frozen=True)
class _Fragment:
    text: str
    rank: int  # lower = more important; the highest rank is dropped first
    shrinkable: bool = False  # a caption: may lose words from its end as a last resort


@dataclass(frozen=True)
class ComposedPrompt:
    positive: str
    negative: str
    positive_tokens: int
    negative_tokens: int
    counter: str
    warnings: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default_factory=tuple)

    def report(self) -> str:
        """A short human-readable summary: token counts, then any warnings."""
        lines = [f"positive: {self.positive_tokens} CLIP tokens, negative: {self.negative_tokens} "
                 f"(window {CLIP_CONTENT} + start/end; counted by {self.counter})"]
        lines.extend(self.warnings)
        return "\n".join(lines)


_BRACKETS = re.compile(r"[()\[\]{}<>|\\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def clean_caption_fragment(text: str) -> str:
    """A caption as one prompt fragment: one line, no brackets, no trailing full stop or comma."""
    text = " ".join(_BRACKETS.sub(" ", text or "").split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).rstrip(" .,;:")


def compose_prompt(product_caption: str, style: str | StylePreset, composition: str | Composition,
                   scene: str = "", background_caption: str = "", *, long_prompt: str = "warn",
                   counter: TokenCounter | None = None, compositions_path: str | os.PathLike | None = None
                   ) -> ComposedPrompt:
    """Positive and negative prompts for CLIPTextEncode (or any CLIP text encoder)."""
    if long_prompt not in LONG_PROMPT_MODES:
        raise InvalidInputError(f"long_prompt must be one of {', '.join(LONG_PROMPT_MODES)}, got {long_prompt!r}")
    preset = style if isinstance(style, StylePreset) else get_style(style)
    presets = load_compositions(compositions_path)
    comp = composition if isinstance(composition, Composition) else get_composition(composition, compositions_path)
    counter = counter or get_token_counter()

    positive = [
        _Fragment(clean_caption_fragment(product_caption), 1, shrinkable=True),
        _Fragment(" ".join((scene or "").split()).rstrip(" ,"), 0, shrinkable=True),
        _Fragment(clean_caption_fragment(background_caption), 5, shrinkable=True),
        *_ranked(comp.prompt, 3, 7),
        *_ranked(preset.prompt, 2, 6),
        *_ranked(presets.base_prompt, 4, 8),
    ]
    negative = [_Fragment(text, i) for i, text in enumerate((*preset.negative, *comp.negative,
                                                               *presets.base_negative))]
    positive, negative = _dedupe(positive), _dedupe(negative)

    warnings: list[str] = []
    dropped: list[str] = []
    if long_prompt == "trim":
        positive = _trim(positive, counter, dropped)
        negative = _trim(negative, counter, dropped)
        if dropped:
            warnings.append(f"trimmed to {CLIP_CONTENT} tokens; dropped: " + "; ".join(dropped))
    positive_text, negative_text = _join(positive), _join(negative)
    pos_tokens, neg_tokens = counter.count(positive_text), counter.count(negative_text)
    for label, parts, tokens in (("positive", positive, pos_tokens), ("negative", negative, neg_tokens)):
        if tokens > CLIP_CONTENT:
            lost = _overflow_start(parts, counter)
            warnings.append(
                f"the {label} prompt has {tokens} CLIP tokens, more than the {CLIP_WINDOW}-token window "
                f"({CLIP_CONTENT} + start/end). ComfyUI's CLIPTextEncode encodes the rest as extra chunks; "
                f"encoders that truncate ignore everything from {lost!r} on. Use long_prompt='trim' to fit.")
    return ComposedPrompt(positive_text, negative_text, pos_tokens, neg_tokens, counter.name, tuple(warnings),
                          tuple(dropped))


def _ranked(fragments: tuple[str, ...], first_rank: int, rest_rank: int) -> list[_Fragment]:
    return [_Fragment(text, first_rank if i == 0 else rest_rank) for i, text in enumerate(fragments)]


def _dedupe(fragments: list[_Fragment]) -> list[_Fragment]:
    seen: set[str] = set()
    out = []
    for fragment in fragments:
        key = fragment.text.lower()
        if fragment.text and key not in seen:
            seen.add(key)
            out.append(fragment)
    return out


def _join(fragments: list[_Fragment]) -> str:
    return ", ".join(f.text for f in fragments if f.text)


def _trim(fragments: list[_Fragment], counter: TokenCounter, dropped: list[str]) -> list[_Fragment]:
    """Drop whole fragments, highest rank first; then shorten shrinkable ones (captions, scene) word by word."""
    kept = list(fragments)
    shortened: set[int] = set()
    while kept and counter.count(_join(kept)) > CLIP_CONTENT:
        whole = [i for i, f in enumerate(kept) if not f.shrinkable or f.rank > 1]
        if whole and len(kept) > 1:
            index = max(whole, key=lambda i: (kept[i].rank, i))
            dropped.append(kept.pop(index).text)
            continue
        index = max(range(len(kept)), key=lambda i: (kept[i].rank, i))
        fragment = kept[index]
        words = fragment.text.split()
        if len(words) <= 1:
            dropped.append(kept.pop(index).text)
            continue
        if fragment.rank not in shortened:
            shortened.add(fragment.rank)
            dropped.append(f"words from the end of {' '.join(words[:6])!r}...")
        kept[index] = _Fragment(" ".join(words[:-1]), fragment.rank, shrinkable=True)
    return kept


def _overflow_start(fragments: list[_Fragment], counter: TokenCounter) -> str:
    """The first fragment that does not fit entirely in the window."""
    for i in range(len(fragments)):
        if counter.count(_join(fragments[: i + 1])) > CLIP_CONTENT:
            return fragments[i].text
    return ""


def chunk_prompt(text: str, counter: TokenCounter | None = None, limit: int = CLIP_CONTENT) -> list[str]:
    """Split a prompt into pieces of at most ``limit`` tokens at ", " boundaries (words as a last resort)."""
    counter = counter or get_token_counter()
    pieces: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            pieces.extend([part] if counter.count(part) <= limit else _pack(part.split(), " ", counter, limit))
    return _pack(pieces, ", ", counter, limit)


def _pack(items: list[str], separator: str, counter: TokenCounter, limit: int) -> list[str]:
    """Greedily join ``items`` with ``separator`` into runs of at most ``limit`` tokens."""
    out: list[str] = []
    current: list[str] = []
    for item in items:
        if current and counter.count(separator.join([*current, item])) > limit:
            out.append(separator.join(current))
            current = []
        current.append(item)
    if current:
        out.append(separator.join(current))
    return out
