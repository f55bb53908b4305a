"""A tiny Kosmos-2-style tokenizer folder, built locally (nothing downloaded).

Kosmos-2's tokenizer is XLM-RoBERTa's sentencepiece unigram model (``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3, Metaspace ``▁`` word starts, ``<s> ... </s>`` added around a text) plus
its tag tokens (``<image>``, ``</image>``, ``<grounding>``, ``<phrase>``, ...). This one has the
same special-token layout with a vocabulary small enough for the ``tiny`` preset (128 ids): whole
words for the prompts the tests use, single characters for everything else, so any lowercase
instruction tokenizes without ``<unk>`` and token counts differ between instructions the way a
real tokenizer's do.

Shared by the tests (`make_tokenizer_folder`) and the golden fixture generator
(``python test/kosmos_tokenizer.py OUT_DIR``). The folder holds ``tokenizer.json``,
``tokenizer_config.json`` and ``special_tokens_map.json``.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
TAGS = ("<image>", "</image>", "<grounding>", "<phrase>", "</phrase>", "<object>", "</object>",
        "</delimiter_of_multi_objects/>")
WORDS = ("An", "image", "of", "a", "robot", "Navigate", "navigate", "to", "the", "gray",
         "basket", "on", "left", "right", "go", "red", "box", "turn", "move", "forward", "blue",
         "stop", "and", "then", "pot", "brown", "door", "green", "ball")
UPPER = "ANGMST"
VOCAB_SIZE = 128


def build_tokenizer():
    """The `tokenizers.Tokenizer` (ids: specials 0-3, pieces, then the tag tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    vocab = [(tok, 0.0) for tok in SPECIALS]
    vocab += [("▁" + w, -2.0) for w in WORDS]
    vocab += [("▁", -6.0)]
    vocab += [(c, -8.0) for c in string.ascii_lowercase + UPPER + string.digits + ".,!?'-"]
    if len(vocab) + len(TAGS) > VOCAB_SIZE:
        raise ValueError(f"{len(vocab) + len(TAGS)} tokens do not fit {VOCAB_SIZE} ids")
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TAGS])
    tok.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def make_tokenizer_folder(folder) -> Path:
    """Write the tokenizer files into ``folder`` (created); return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "pad_token": "<pad>", "sep_token": "</s>", "cls_token": "<s>",
               "additional_special_tokens": list(TAGS)}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = dict(special, tokenizer_class="PreTrainedTokenizerFast",
                  model_max_length=2048, add_bos_token=True, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python test/kosmos_tokenizer.py OUT_DIR")
    print(make_tokenizer_folder(sys.argv[1]))
