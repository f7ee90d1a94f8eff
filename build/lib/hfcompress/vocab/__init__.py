"""Vocabulary compression: trim the vocabulary to the tokens a task uses (tokenizer and embedding rows together, a
plain transformers checkpoint as result), and store the word embeddings as int8 rows with per-row scales.

The word embeddings are the largest tensor of a small encoder (half of MiniLM-L6's parameters), and a classifier
fine-tuned on one dataset looks up only a fraction of their rows: `trim_vocabulary` removes the others,
`quantize_embeddings_int8` shrinks what is left to a quarter.
"""

from .config import VocabTrimConfig
from .int8 import Int8Embedding, dequantize_embeddings, quantize_embeddings_int8, restore_int8_embeddings
from .trim import (
    TokenSelection,
    UnsupportedTokenizerError,
    VocabTrimReport,
    count_tokens,
    select_tokens,
    trim_embeddings,
    trim_tokenizer,
    trim_vocabulary,
    vocab_coverage,
)

__all__ = [
    "Int8Embedding",
    "TokenSelection",
    "UnsupportedTokenizerError",
    "VocabTrimConfig",
    "VocabTrimReport",
    "count_tokens",
    "dequantize_embeddings",
    "quantize_embeddings_int8",
    "restore_int8_embeddings",
    "select_tokens",
    "trim_embeddings",
    "trim_tokenizer",
    "trim_vocabulary",
    "vocab_coverage",
]
