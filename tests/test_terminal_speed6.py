"""The terminal report's shortcuts for texts of one-cell characters: the line breaks found a
line at a time are rich's own word breaks (`rich._wrap.divide_line`), and the pieces and
cells of the plain layouts are rich's, over seeded random texts (leading and trailing
blanks, runs of blanks, words longer than a line, URLs, numbers) and every small width;
texts with wide (CJK) or zero-width characters or other blanks are left to rich."""

from __future__ import annotations

import numpy as np
import pytest
from rich._wrap import divide_line
from rich.cells import cell_len

from spikelens.report.terminal import (
    _cells,
    _is_narrow,
    _narrow_breaks,
    _pieces,
    _widest_word,
)

_WORDS = ["a", "loss", "1.45", "->", "3.17", "(1.9x", "×2.32,", "31216–31250", "—", "é",
          "https://example.com/a/very/long/path?with=query&and=more", "x" * 40,
          "grad_norm", "1e-05", "0", "", " ", "  ", "→"]


def _random_text(rng: np.random.Generator) -> str:
    words = [str(w) for w in rng.choice(_WORDS, int(rng.integers(0, 30)))]
    sep = [" " * int(rng.integers(1, 4)) for _ in words]
    text = "".join(w + s for w, s in zip(words, sep, strict=True))
    if rng.random() < 0.5:
        text = text.rstrip(" ")
    if rng.random() < 0.2:
        text = " " * int(rng.integers(1, 9)) + text
    return text


@pytest.mark.parametrize("seed", range(4))
def test_narrow_breaks_are_riches_divide_line(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(5000):
        text = _random_text(rng)
        assert _is_narrow(text)
        width = int(rng.integers(1, 90))
        fold = bool(rng.integers(0, 2))
        assert _narrow_breaks(text, width, fold) == divide_line(text, width, fold=fold), (
            text, width, fold)


def test_narrow_breaks_on_letters_and_blanks_at_every_width() -> None:
    """Short texts of letters and spaces (every placement of blanks, words of any length)
    against rich at every width from one cell to past the text's end."""
    rng = np.random.default_rng(7)
    for _ in range(3000):
        text = "".join(rng.choice(["a", "b", " ", " "], int(rng.integers(0, 40))))
        for width in range(1, len(text) + 3):
            for fold in (True, False):
                assert _narrow_breaks(text, width, fold) == divide_line(text, width,
                                                                        fold=fold)


def test_edge_texts() -> None:
    for text in ["", " ", "     ", "a", " a", "a ", "  abcdefgh  ij", "abcdefghij",
                 "ab cdefghijklmn op", "abcdefghijkl   "]:
        for width in range(1, 14):
            for fold in (True, False):
                assert _narrow_breaks(text, width, fold) == divide_line(text, width,
                                                                        fold=fold)
    assert _narrow_breaks("abc def", 0, True) is None  # rich's own for a width of no cell


def test_wide_and_zero_width_characters_and_other_blanks_go_to_rich() -> None:
    """CJK (two cells), zero-width joiners, variation selectors, control characters and
    blanks other than the space are not narrow: their pieces are rich's own breaks."""
    for text in ["アプリケーションは1670万色を使用でき", "Textual は Python の高速",
                 "a\u200db", "a\ufe0f b", "no\u00a0break here", "em\u2003space",
                 "ctl\x1bchar"]:
        assert not _is_narrow(text)
        for width in (1, 2, 3, 5, 8, 13):
            for fold in (True, False):
                bounds = [0, *divide_line(text, width, fold=fold), len(text)]
                want = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
                assert _pieces(text, width, fold) == want
    assert _is_narrow("×2.32, z 14.2 – é → ok")


def test_cells_and_widest_word_are_riches_measure() -> None:
    rng = np.random.default_rng(3)
    texts = [_random_text(rng) for _ in range(500)]
    texts += ["アプリ ケーション", "a\u200db c", "no\u00a0break here", ""]
    for text in texts:
        assert _cells(text) == cell_len(text)
        assert _widest_word(text) == max((cell_len(w) for w in text.split()), default=0)


def test_pieces_are_riches_breaks() -> None:
    rng = np.random.default_rng(5)
    for _ in range(2000):
        text = _random_text(rng)
        width = int(rng.integers(1, 60))
        fold = bool(rng.integers(0, 2))
        bounds = [0, *divide_line(text, width, fold=fold), len(text)]
        assert _pieces(text, width, fold) == [text[a:b]
                                              for a, b in zip(bounds, bounds[1:], strict=False)]
    assert _pieces("a\tb", 10, True) is None
    assert _pieces("a b", None, False) == ["a b"]
