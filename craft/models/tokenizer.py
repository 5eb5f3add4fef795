"""A word-level CLIP tokenizer built locally, with no file to download.

CLIP's BPE tokenizer merges characters into sub-words by a ranked merge list. We learn that
list on a word list, so known words become one token and unknown words fall back to
characters. The result is a real ``CLIPTokenizer`` that saves and loads with
``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import re
import string

from transformers import CLIPTokenizer

#: Words the phantom and curated prompts use; more can be passed in.
BASE_WORDS = """
a an the of and or with without in on at to from no not is are as by for than into over
image photo radiograph chest xray x-ray frontal view pa ap lateral lung lungs left right upper
lower heart cardiac mediastinum enlarged normal size silhouette ratio cardiothoracic
cardiomegaly effusion pleural fluid meniscus blunted sharp costophrenic angle angles nodule
nodules mass opacity round small solitary focal clear field fields dermoscopy dermoscopic skin
lesion nevus melanoma benign malignant symmetric asymmetric regular irregular border borders
colour colours color colors brown dark light black blue white veil red pink pigment network
uniform multiple single one two three several diameter large structure structures pattern
showing shows visible present absent well defined circumscribed notched lobulated diffuse
""".split()

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that turn every word of ``words`` into one token, learnt deterministically.

    Classic BPE (Sennrich et al.): repeatedly merge the most frequent adjacent symbol pair,
    counting each distinct word once. Ties go to the lexicographically smallest pair, so the
    same word list always gives the same merges, and with them the same token ids. (The Rust
    ``tokenizers`` trainer breaks ties in hash order, which made seeded builds differ.)
    """
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in words if w}
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in split.values():
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = out


def build_tokenizer(words: list[str] = (), model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary holds every character and each given word whole.

    Deterministic: the same word list gives the same vocabulary, ids and merges in every
    process, so a seeded tiny generator is reproducible bit for bit.
    """
    all_words = sorted({w for text in [*BASE_WORDS, *words] for w in _WORD.findall(text.lower())})
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    alphabet += sorted({c for w in all_words for c in w} - set(alphabet))
    merges = learn_merges(all_words)
    vocab: dict[str, int] = {}
    for token in [*SPECIAL, *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
