"""`VocabTrimConfig`: which tokens a trimmed vocabulary keeps. Validated on creation.

Why a separate config: the choice of tokens is the only decision in vocabulary trimming (the rest, rewriting the
tokenizer and gathering the embedding rows, is mechanical), and it is recorded with the checkpoint so that a trimmed
model says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "vocab_trim_config.json"

@dataclass
class VocabTrimConfig(MethodConfig):
    """Vocabulary trimming (TextPruner's idea, Yang et al. 2022): a classifier fine-tuned on one dataset uses a
    fraction of its tokenizer's vocabulary, and the embedding rows of the other tokens are dead weight (half of
    MiniLM-L6's parameters are its 30,522 x 384 word embeddings).

    Kept, in this order of precedence: the special and added tokens of the tokenizer (and every id the model config
    names: pad, bos, eos, ...), `keep_tokens`, the fallback tokens (`keep_characters`), then the tokens seen at least
    `min_count` times in the texts, most frequent first when `max_vocab_size` caps the total.
    """

    config_name = CONFIG_NAME

    min_count: int = field(
        default=1,
        metadata={"help": "Keep a token when the texts produce it at least this many times (>= 1). 1 keeps every "
                  "token seen, so that every text of the list tokenizes exactly as before."},
    )
    max_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Optional cap on the size of the trimmed vocabulary, everything included: special tokens, "
                  "keep_tokens and fallback characters first, then the most frequent tokens of the texts (ties "
                  "broken by the lower id). Default: no cap."},
    )
    keep_tokens: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra tokens to keep whether or not the texts use them, as vocabulary entries (e.g. "
                  "'movie', '##ing'); each must be one token of the tokenizer's vocabulary."},
    )
    keep_characters: bool = field(
        default=True,
        metadata={"help": "Always keep the tokenizer's fallback alphabet so that text with words never seen still "
                  "tokenizes to meaningful pieces (characters at worst) instead of the unknown token: WordPiece, "
                  "every single-character token and its '##' continuation form; BPE, every single-character token "
                  "(with its continuation and end-of-word forms; the 256 byte symbols of a byte-level BPE) and byte "
                  "fallback tokens; Unigram, every single-character piece, the word-boundary piece and byte fallback "
                  "pieces. No effect on word-level tokenizers (they have no alphabet)."},
    )

    def __post_init__(self):
        errors = []
        try:
            self.min_count = _as_int(self.min_count)
        except (TypeError, ValueError):
            errors.append(f"min_count: {self.min_count!r} is not a whole number")
        else:
            if self.min_count < 1:
                errors.append(f"min_count must be >= 1 (a token seen at least once), got {self.min_count}")
        if self.max_vocab_size is not None:
            try:
                self.max_vocab_size = _as_int(self.max_vocab_size)
            except (TypeError, ValueError):
                errors.append(f"max_vocab_size: {self.max_vocab_size!r} is not a whole number")
            else:
                if self.max_vocab_size < 1:
                    errors.append(f"max_vocab_size must be a positive number of tokens, got {self.max_vocab_size}")
        if self.keep_tokens is None:
            self.keep_tokens = []
        if isinstance(self.keep_tokens, str):
            errors.append(f"keep_tokens must be a list of tokens, got the string {self.keep_tokens!r} (write "
                          f"[{self.keep_tokens!r}])")
        else:
            self.keep_tokens = list(self.keep_tokens)
            bad = [t for t in self.keep_tokens if not isinstance(t, str) or not t]
            if bad:
                errors.append(f"keep_tokens must be non-empty strings, got {bad!r}")
        if not isinstance(self.keep_characters, bool):
            errors.append(f"keep_characters must be true or false, got {self.keep_characters!r}")
        if errors:
            raise UserInputError("Vocabulary trimming configuration: " + "; ".join(errors))

def _as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a count")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value} is not whole")
    return int(value)
