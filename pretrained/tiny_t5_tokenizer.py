"""A small T5-format (SentencePiece Unigram) tokenizer learned offline from our own prompt lines.

FLUX.1's second tokenizer is T5 v1.1's: a Unigram model over "▁"-prefixed pieces (Metaspace),
``<pad>`` = 0, ``</s>`` = 1 (appended to every sequence), ``<unk>`` = 2, then the pieces, then the
100 ``<extra_id_N>`` sentinels in reverse order (``<extra_id_0>`` is the last id), 32,100 entries
in all. We train the Unigram model with the ``tokenizers`` library on prompt-like lines made of
the tiny CLIP tokenizer's words and DreamBench's, keep that layout, sentinels included (methods
that add tokens see T5's tokenizer/embedding-row mismatch only if the ids are laid out the same),
and save it as ``transformers.T5TokenizerFast``. Real T5 also normalises with SentencePiece's
compiled NFKC map; building one needs sentencepiece, and transformers 5's T5TokenizerFast keeps
no other normaliser when it loads, so this one has none (prompts are ASCII: no difference).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import T5TokenizerFast

from pretrained.tiny_tokenizer import _CORE_WORDS, _PROMPT_WORDS

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as in T5
SPACE = "▁"  # SentencePiece's word-start marker (Metaspace)
NUM_SENTINELS = 100  # <extra_id_0> ... <extra_id_99>
TINY_T5_MAX_LENGTH = 32  # FLUX.1-dev runs T5 at 512 tokens, schnell at 256

# DreamBench's subject and prompt words that the CLIP word lists lack.
_DREAMBENCH_WORDS = (
    "sks person people headphone headphones sunglasses rainbow sweater raincoat crown cape "
    "colorful fancy boots berry dough poop emoji grey toys bed made out lego gold silver marble "
    "wood paper front side view dslr photograph high quality detailed portrait art oil watercolor "
    "sketch anime digital 3d render pixel drawing illustration van gogh monet pencil manga low "
    "poly cyberpunk futuristic vintage lighting sunset night sky moon space underwater kitchen "
    "table chair sofa window garden flower flowers lake river sitting standing running jumping"
).split()


def _corpus() -> list[str]:
    """Short prompt-like lines in which every word appears in several different lines.

    The trainer seeds its pieces from substrings that occur more than once; a word met in a
    single line would stay split into characters. Core (class) words get a third line.
    """
    words = list(dict.fromkeys(_CORE_WORDS + _PROMPT_WORDS + _DREAMBENCH_WORDS))
    n = len(words)
    lines = [f"a photo of a {word}" for word in words]
    for i, word in enumerate(words):  # and in a line with two others, drawn by a fixed stride
        lines.append(f"{word} {words[(7 * i + 1) % n]} {words[(13 * i + 5) % n]}")
    lines += [f"a {word} in the style of a painting" for word in _CORE_WORDS]
    return lines


def _train_pieces() -> list[tuple[str, float]]:
    """Unigram pieces with their log-probabilities: specials first (ids 0, 1, 2), then the
    pieces by falling score, the same list on every build."""
    tokenizer = Tokenizer(models.Unigram())
    # Spaces become "▁" before training, as SentencePiece sees them; no pre-tokenizer, so
    # substrings are counted across lines rather than over a table of distinct words.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,  # an upper bound; the corpus supports fewer pieces
        special_tokens=[PAD, EOS, UNK],
        unk_token=UNK,
        initial_alphabet=[c for c in string.printable if not c.isspace()],  # any ASCII word
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    # A piece with "▁" inside spans two words; T5 splits on whitespace first, so it is dead.
    scores = {p: round(s, 6) for p, s in vocab[3:] if SPACE not in p[1:]}
    # Run to run, the trainer's scores differ in their last bits (parallel sums), and the
    # characters it pruned but must keep come back below every piece, spaced in hash order: so
    # round, give those characters one floor score, and sort, and the ids never change.
    lowest_word_piece = min(score for piece, score in scores.items() if len(piece) > 1)
    for piece, score in scores.items():
        if len(piece) == 1 and score < lowest_word_piece:
            scores[piece] = lowest_word_piece - 1.0
    pieces = sorted(scores.items())
    pieces.sort(key=lambda item: -item[1])  # stable: ties stay in alphabetical order
    return [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0), *pieces]


def write_tiny_t5_tokenizer(
    folder: Path, size: int | None = None, max_length: int = TINY_T5_MAX_LENGTH
) -> int:
    """Save a tiny T5TokenizerFast in `folder`; return its size (``len(tokenizer)``).

    ``size``: pad the vocabulary with never-chosen filler pieces to this many entries (sentinels
    included), as real T5's 32,100; tokenizing is unchanged.
    """
    pieces = _train_pieces()
    if size is not None:
        filler = size - len(pieces) - NUM_SENTINELS
        if filler < 0:
            raise ValueError(f"size {size} is below the trained vocabulary ({len(pieces)} + 100)")
        # Scores far below any trained piece's, and strings no prompt holds.
        pieces += [(f"<unused_{i}>", -100.0) for i in range(filler)]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(NUM_SENTINELS))]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=NUM_SENTINELS, model_max_length=max_length)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)
