"""A small CLIP-format BPE tokenizer learned offline from our own word list.

CLIP's tokenizer reads `vocab.json` + `merges.txt`: 256 byte symbols, the same symbols with the
end-of-word marker `</w>`, one entry per learned merge, and the two special tokens. We learn the
merges with plain byte-pair counting on a corpus of prompt words, so that common class words
("dog", "toy", ...) become single tokens, as they are in SD 1.5's tokenizer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

END_OF_WORD = "</w>"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"

# Words the tiny tokenizer must hold as single tokens: class words (DreamBench's among them),
# initializer words and prompt vocabulary; weights repeat the most important ones.
_CORE_WORDS = (
    "a an the of photo picture rendering cropped close up far away zoomed in on with and my one "
    "dog cat toy backpack bowl can candle clock sneaker boot glasses teapot vase cartoon stuffed "
    "animal plushie robot car person man woman object style painting sculpture shoe bag bear "
    "sloth duck monster wolf puppy kitten"
).split()
_PROMPT_WORDS = (
    "clean dirty dark bright good nice cool small large weird big red blue green yellow purple "
    "pink white black brown orange jungle snow beach cobblestone street fabric wooden floor city "
    "background mountain house rug forest wheat field tree autumn leaves eiffel tower floating top "
    "water ocean milk grass sunflowers mirror sidewalk crowded dirt road wearing santa hat rainbow "
    "scarf black top hat chef outfit police firefighter nurse sailor sleeping riding bucket shiny "
    "very rendition cube shaped next to"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _learn_merges(word_counts: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy byte-pair merges, most frequent pair first, ties broken alphabetically."""
    words = {tuple(w[:-1]) + (w[-1] + END_OF_WORD,): c for w, c in word_counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        words = merged
    return merges


def write_tiny_clip_tokenizer(folder: Path, num_merges: int = 600) -> int:
    """Write vocab.json and merges.txt for a tiny CLIP tokenizer; return the vocabulary size."""
    counts: Counter[str] = Counter()
    for word in _CORE_WORDS:
        counts[word] += 50
    for word in _PROMPT_WORDS:
        counts[word] += 5
    merges = _learn_merges(counts, num_merges)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + END_OF_WORD for s in symbols]
    vocab_list += ["".join(pair) for pair in merges] + [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)
