"""The terminal report's shortcuts for texts of one-cell characters: the line breaks found a
line at a time are rich's own word breaks (`rich._wrap.divide_line`), and the pieces and
cells of the plain layouts are rich's, over seeded random texts (leading and trailing
blanks, runs of blanks, words longer than a line, URLs, numbers) and every small width;
texts with wide (CJK) or zero-width characters or other blanks are left to rich."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_event_table
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


def test_paragraphs_without_text_are_riches_text() -> None:
    """`_paragraph` (no `Text` built without colour, control codes stripped only where
    there are some) writes what rich prints for the assembled `Text` in a `Padding` of the
    indent, and at indent 0 what `console.print` of it prints, with colour or without, at
    many widths; `_blank` writes what `console.print()` does."""
    from spikelens.report.terminal import (
        RenderOptions,
        _blank,
        _console,
        _paragraph,
        _rich_paragraph,
    )

    rng = np.random.default_rng(9)
    extra = ["\x07", "bell\x08", "\r", "アプリ", "a\u200db", "\x1b[31m", "[bold]", "\u00a0"]
    for trial in range(600):
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            text = _random_text(rng)
            if rng.random() < 0.2:
                text += str(rng.choice(extra)) + _random_text(rng)
            parts.append((text, str(rng.choice(["", "bold", "dim"]))))
        if not "".join(t for t, _ in parts):
            parts[0] = ("x", parts[0][1])
        width = int(rng.integers(20, 200))
        indent = int(rng.choice([0, 1, 2, 5]))
        color = trial % 3 == 0
        want_console = _console(RenderOptions(width=width, color=color))
        _rich_paragraph(want_console, indent, *parts)
        want_console.print()
        got_console = _console(RenderOptions(width=width, color=color))
        _paragraph(got_console, got_console.options.max_width, indent, *parts)
        _blank(got_console)
        want = want_console.file.getvalue()  # type: ignore[attr-defined]
        got = got_console.file.getvalue()  # type: ignore[attr-defined]
        if not color:  # `render` strips the blanks rich pads lines with
            want = "\n".join(line.rstrip() for line in want.split("\n"))
            got = "\n".join(line.rstrip() for line in got.split("\n"))
        assert got == want, (parts, width, indent, color)


_CELL_WORDS = ["1", "12", "spike", "nonfinite", "3965–3966", "(peak", "3965)", "×3.88,", "z",
               "33.9", "yes,", "step", "bad_batch", "0.75", "grad_explosion", "-", "inf",
               "100256–100257", "lr_schedule", "  ", "a-very-long-word-indeed", "é", "→"]


@pytest.mark.parametrize("seed", range(6))
def test_plain_table_with_ellipses_is_riches_layout(seed: int) -> None:
    """The colourless event table on narrow consoles (30 to 130 cells), where rich cuts
    words too long for their column with an ellipsis and squeezes columns to no cell at
    all, is rich's text line for line; tables with wide (CJK) characters are rich's own
    wherever the plain layout declines."""
    from spikelens.report.terminal import RenderOptions, _console, _plain_table

    rng = np.random.default_rng(100 + seed)
    laid = 0
    for trial in range(60):
        wide = bool(rng.integers(0, 2))
        words = _CELL_WORDS + (["アプリ"] if trial % 5 == 0 else [])
        table = random_event_table(rng, wide, int(rng.integers(1, 25)), words, words, 20)
        width = int(rng.integers(30, 131))
        console = _console(RenderOptions(width=width))
        lines = _plain_table(console, table)
        if lines is None:
            continue
        laid += 1
        want = _console(RenderOptions(width=width))
        want.print(table)
        assert "".join(line + "\n" for line in lines) == want.file.getvalue(), (  # type: ignore[attr-defined]
            seed, trial, width)
    assert laid >= 40
