"""Prompt tokenization: the instruction becomes the text ids the encoder consumes.

Everything runs on a `tokenizers.Tokenizer`, whichever way it was obtained:

* ``tokenizer.json`` in a local folder (the tiny demo policy, an exported ONNX model's
  metadata, or a Kosmos-2 backbone folder), or any local folder that
  ``transformers.AutoTokenizer`` understands;
* the built-in word-level tokenizer, for presets that run with random weights and no backbone
  folder.

Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Kosmos-2's special-token layout: <s>=0, <pad>=1, </s>=2, <unk>=3, then <image>, </image>,
# <grounding>.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<image>", "</image>", "<grounding>")
# Small vocabulary of the built-in tokenizer: the prompt template and common robot commands.
BUILTIN_WORDS = (
    "an image of a robot go to move drive turn the red green blue yellow box ball door left right "
    "forward backward back ahead straight stop wait slowly quickly towards toward cup chair table "
    "person wall around rotate spin clockwise counterclockwise and then please navigate approach "
    "follow find reach near far center middle front behind"
).split()
MAX_INSTRUCTION_CHARS = 512


class CommandError(ValueError):
    """An instruction that cannot be used (empty, too long, or tokenizes to too many ids)."""


def builtin_tokenizer():
    """Return the deterministic word-level tokenizer used when no tokenizer folder is given."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in BUILTIN_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def load_tokenizer(path: str | Path | None):
    """Load a `tokenizers.Tokenizer` from a local file or folder, or the built-in one for None."""
    from tokenizers import Tokenizer

    if path is None or str(path) == "":
        return builtin_tokenizer()
    path = Path(path)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if path.is_dir():
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        return fast.backend_tokenizer
    raise FileNotFoundError(f"tokenizer path {str(path)!r} is neither a tokenizer.json nor a "
                            "folder")


# Their server's prompt (minuum/vla Mobile_VLA/inference_server.py `_tokenize_instruction`): an
# instruction already starting with "<grounding>" is used as is, one starting with
# "An image of a robot" gets "<grounding>" in front, any other the whole template.
SERVER_TEMPLATE = "<grounding>An image of a robot {instruction}"


class PromptTokenizer:
    """Turns an instruction into prompt ids, once per command, and knows the special ids.

    ``team=True`` (the ``robovlms_*`` token layouts) tokenizes like their inference server:
    the server's prompt rules, ``<s> ... </s>`` around the text (``add_special_tokens``, as the
    Kosmos-2 tokenizer does), no padding (the layout knows ``max_text_len``) and at most
    ``max_tokens`` ids: a longer prompt is refused (their server would truncate it).
    """

    def __init__(self, tokenizer, template: str, pad_to: int = 0, max_tokens: int = 256,
                 team: bool = False):
        if "{instruction}" not in template:
            raise ValueError(f"prompt template {template!r} has no '{{instruction}}' field")
        self.tokenizer = tokenizer
        self.template = template
        self.pad_to = int(pad_to)
        self.max_tokens = int(max_tokens)
        self.team = bool(team)
        names = ("<s>", "<pad>", "<image>", "</image>") + (("</s>",) if self.team else ())
        self.special_ids = {name: self._token_id(name) for name in names}

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise ValueError(f"tokenizer has no special token {token!r} (not a Kosmos-2 "
                             "tokenizer?)")
        return int(tid)

    @property
    def prefix_ids(self) -> list[int]:
        """Ids before the image tokens: ``<s> <image>``."""
        return [self.special_ids["<s>"], self.special_ids["<image>"]]

    @property
    def image_end_id(self) -> int:
        """Id after the image tokens: ``</image>``."""
        return self.special_ids["</image>"]

    def encode(self, instruction: str, max_chars: int = MAX_INSTRUCTION_CHARS) -> np.ndarray:
        """Return the prompt's ids as int64 (L,); pads with ``<pad>`` only when ``pad_to`` > 0."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise CommandError("empty instruction")
        if len(instruction) > max_chars:
            raise CommandError(
                f"instruction has {len(instruction)} characters (limit {max_chars})"
            )
        text = self.prompt(instruction)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.team:
            ids = [self.special_ids["<s>"], *ids, self.special_ids["</s>"]]
        limit = self.pad_to or self.max_tokens
        if len(ids) > limit:
            raise CommandError(f"instruction tokenizes to {len(ids)} ids (limit {limit})")
        if self.pad_to:
            ids = ids + [self.special_ids["<pad>"]] * (self.pad_to - len(ids))
        return np.asarray(ids, dtype=np.int64)

    def prompt(self, instruction: str) -> str:
        """The text that is tokenized for ``instruction`` (server rules for team tokenizers)."""
        clean = instruction.strip()
        if self.team and self.template == SERVER_TEMPLATE:
            if clean.startswith("<grounding>"):
                return clean
            if clean.startswith("An image of a robot"):
                return "<grounding>" + clean
        return self.template.format(instruction=clean)

    def to_json(self) -> str:
        """Serialize tokenizer and template so an exported model can carry them."""
        return json.dumps({"tokenizer": json.loads(self.tokenizer.to_str()),
                           "template": self.template, "pad_to": self.pad_to,
                           "max_tokens": self.max_tokens, "team": self.team})

    @classmethod
    def from_json(cls, text: str) -> PromptTokenizer:
        """Inverse of `to_json`."""
        from tokenizers import Tokenizer

        data = json.loads(text)
        tok = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        return cls(tok, data["template"], data.get("pad_to", 0), data.get("max_tokens", 256),
                   data.get("team", False))
