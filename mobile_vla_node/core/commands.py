"""Which instructions may drive the robot: stop phrases, an optional allow-list, basic sanity.

The policy maps *any* text to motion: an instruction it was never trained on ("do not move",
"🚀") still produces velocities, because nothing in the LSTM/MLP head can say "I do not know
this". So the node decides before the policy sees the text:

* a **stop phrase** ("stop", "halt", "정지", ...) anywhere in the instruction stops the robot at
  once, without inference;
* with a non-empty **allow-list** only those instructions drive; anything else is rejected;
* text that is not an instruction (no letters, invalid UTF-8, control characters) is rejected.

ROS-free and stateless; `InputRules.command` applies the verdict.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

DEFAULT_STOP_PHRASES = ("stop", "halt", "freeze", "do not move", "don't move", "dont move",
                        "정지", "멈춰", "그만")


def normalize(text: str) -> str:
    """Casefold, NFKC, punctuation to spaces, whitespace collapsed: the form phrases match on."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    text = "".join(ch if (ch.isalnum() or ch == "'" or ch.isspace()) else " " for ch in text)
    return " ".join(text.split())


@dataclass(frozen=True)
class Verdict:
    """What to do with one instruction: "drive", "stop" or "reject", and why."""

    action: str
    reason: str = ""


class CommandFilter:
    """Classifies an instruction against stop phrases and the allow-list."""

    def __init__(self, stop_phrases=DEFAULT_STOP_PHRASES, allowed_instructions=()):
        self.configure(stop_phrases, allowed_instructions)

    def configure(self, stop_phrases, allowed_instructions) -> None:
        """Set (live-tuned) phrases; empty strings are ignored."""
        self.stop_phrases = tuple(p for p in (normalize(s) for s in stop_phrases) if p)
        self.allowed = frozenset(p for p in (normalize(s) for s in allowed_instructions) if p)
        self._stop_patterns = [self._pattern(p) for p in self.stop_phrases]

    @staticmethod
    def _pattern(phrase: str) -> re.Pattern:
        # Whole words for alphabetic scripts ("stop" must not match "stopwatch"); scripts written
        # without spaces or with attached particles (Korean "멈춰요") match as a substring.
        if phrase.isascii():
            return re.compile(rf"(?<![\w']){re.escape(phrase)}(?![\w'])")
        return re.compile(re.escape(phrase))

    def check(self, text: str) -> Verdict:
        """The verdict for ``text`` (as received, before tokenization)."""
        if "\ufffd" in text:
            return Verdict("reject", "invalid UTF-8 in instruction")
        if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
            return Verdict("reject", "control characters in instruction")
        norm = normalize(text)
        if not any(ch.isalpha() for ch in norm):
            return Verdict("reject", "instruction has no words")
        for phrase, pattern in zip(self.stop_phrases, self._stop_patterns, strict=True):
            if pattern.search(norm):
                return Verdict("stop", f"stop phrase {phrase!r}")
        if self.allowed and norm not in self.allowed:
            return Verdict("reject", "not in allowed_instructions")
        return Verdict("drive")
