"""A word-level CLIP tokenizer built locally, with no file to download.

CLIP's BPE tokenizer merges characters into sub-words by a ranked merge list. We train that
list on a word list, so known words become one token and unknown words fall back to
characters. The result is a real ``CLIPTokenizer`` that saves and loads with
``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import json
import re
import string

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
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


def build_tokenizer(words: list[str] = (), model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary holds every character and each given word whole.

    The merges come from training BPE (Hugging Face ``tokenizers``) on the word list with a
    vocabulary large enough that every listed word ends up as a single token.
    """
    all_words = sorted({w for text in [*BASE_WORDS, *words] for w in _WORD.findall(text.lower())})
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=SPECIAL,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(all_words, trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    for c in alphabet:  # every character, mid-word and word-final, so nothing is unknown
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = [tuple(m) for m in trained["merges"]]
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
