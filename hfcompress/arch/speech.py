"""Speech models: Whisper (encoder-decoder) and wav2vec2 / HuBERT (encoders over audio features).

Their attentions share one layout, ``q_proj/k_proj/v_proj/out_proj`` with ``num_heads`` and ``head_dim``; Whisper
reshapes keys and values with ``num_heads`` (slicing the projections alone is not enough), wav2vec2 and HuBERT with
``-1``. All three distil (Whisper speech-to-text by its decoder, audio classifiers and CTC models by their logits
and hidden states), prune with physical removal and quantize through the text models' mechanisms.
"""

import logging

import torch.nn as nn

from .base import ArchAdapter, AttentionLayout, StackLayout, register_adapter

logger = logging.getLogger(__name__)


def _attention(module: str) -> AttentionLayout:
    return AttentionLayout(module=module, q=f"{module}.q_proj", k=f"{module}.k_proj", v=f"{module}.v_proj",
                           o=f"{module}.out_proj", count_attrs=("num_heads",), head_dim_attr="head_dim")


WHISPER = register_adapter(
    ArchAdapter(
        model_types=("whisper",),
        layers_path="encoder.layers",
        num_layers_key="encoder_layers",
        hidden_size_key="d_model",
        num_heads_key="encoder_attention_heads",
        qkv_paths=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attention_output_path="self_attn.out_proj",
        ffn_paths=("fc1", "fc2"),
        stacks=(
            StackLayout("encoder.layers", "encoder_layers", (_attention("self_attn"),), ("fc1", "fc2")),
            StackLayout("decoder.layers", "decoder_layers", (_attention("self_attn"), _attention("encoder_attn")),
                        ("fc1", "fc2")),
        ),
        alignment_heads=("decoder.layers", "encoder_attn"),  # generation_config.alignment_heads: word timestamps
    )
)
WAV2VEC2 = register_adapter(
    ArchAdapter(
        model_types=("wav2vec2", "hubert"),
        layers_path="encoder.layers",
        qkv_paths=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
        attention_output_path="attention.out_proj",
        ffn_paths=("feed_forward.intermediate_dense", "feed_forward.output_dense"),
        stacks=(
            StackLayout("encoder.layers", "num_hidden_layers", (_attention("attention"),),
                        ("feed_forward.intermediate_dense", "feed_forward.output_dense")),
        ),
    )
)


# ---- encoder-decoder speech families: the decoder, as sequence-to-sequence distillation needs it --------------------
# (Whisper: the student keeps the teacher's encoder and a few of its decoder layers, distil-whisper style.)

_DECODER_PATHS = {"whisper": "decoder.layers"}


def is_speech_seq2seq(model_or_config) -> bool:
    """True for an encoder-decoder speech family whose decoder hfcompress can cut (Whisper)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in _DECODER_PATHS and bool(getattr(config, "is_encoder_decoder", False))


def decoder_stack(model_or_config) -> StackLayout:
    """The `StackLayout` of the decoder blocks (path from the base model, config key of their count)."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _DECODER_PATHS:
        from .base import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"hfcompress knows no decoder layout for model type {model_type!r}; sequence-to-sequence distillation "
            f"supports: {', '.join(sorted(_DECODER_PATHS))}"
        )
    adapter = next(a for a in (WHISPER,) if model_type in a.model_types)
    return next(s for s in adapter.stacks if s.layers_path == _DECODER_PATHS[model_type])


def num_decoder_layers(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, decoder_stack(config).num_layers_key))


def keep_decoder_layers(model, layers: list[int]) -> None:
    """Keep only the decoder blocks `layers` (0-based, in this order), in place: the block list, the config's count,
    each attention's `layer_idx` (the key/value cache is indexed by it), and Whisper's `alignment_heads` (pairs
    ``[layer, head]`` of the generation config, for word timestamps: pairs of dropped layers go, kept ones are
    renumbered)."""
    import torch.nn as nn

    from .base import get_submodule

    stack = decoder_stack(model)
    head, _, last = stack.layers_path.rpartition(".")
    parent = get_submodule(model.base_model, head) if head else model.base_model
    old = getattr(parent, last)
    new = nn.ModuleList([old[i] for i in layers])
    for new_idx, block in enumerate(new):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    setattr(parent, last, new)
    setattr(model.config, stack.num_layers_key, len(layers))
    gen = getattr(model, "generation_config", None)
    heads = getattr(gen, "alignment_heads", None) if gen is not None else None
    if heads:
        where = {old_idx: new_idx for new_idx, old_idx in enumerate(layers)}
        gen.alignment_heads = [[where[l], h] for l, h in heads if l in where] or None


def decoder_prompt_ids(tokenizer) -> list[int]:
    """The tokens a Whisper decoder starts from (``<|startoftranscript|>`` [language, task] ``<|notimestamps|>``; an
    English-only model: two tokens), as its tokenizer and `generate` put them."""
    prefix = getattr(tokenizer, "prefix_tokens", None)
    if not prefix:
        raise ValueError(f"{type(tokenizer).__name__} has no Whisper decoder prompt (prefix_tokens)")
    return [int(i) for i in prefix]


def is_multilingual_whisper(model_or_generation_config) -> bool:
    """True for a Whisper whose generation config knows languages (``lang_to_id``): it needs a language token."""
    gen = getattr(model_or_generation_config, "generation_config", model_or_generation_config)
    return bool(gen is not None and getattr(gen, "is_multilingual", False) and getattr(gen, "lang_to_id", None))


def transcription_language(model_or_generation_config, language: str | None = None, default: str = "en",
                           what: str = "language") -> str | None:
    """The language a Whisper will transcribe in, checked, without changing anything: for a multilingual model
    ``language`` (a code such as ``"en"`` or ``"<|de|>"``), else the one its generation config already names, else
    `default` (logged: the project's data is English); None for an English-only model (``.en``), which takes no
    language token and refuses any language but English. `what` names the option in the error (``--language``)."""
    from ..errors import UserInputError

    gen = getattr(model_or_generation_config, "generation_config", model_or_generation_config)
    if not is_multilingual_whisper(gen):
        if language is not None and str(language).strip("<|>").lower() not in ("en", "english"):
            raise UserInputError(f"{what} {language!r}: this Whisper is English-only (no language tokens); expected "
                                 "'en' or no language")
        return None
    chosen = language or getattr(gen, "language", None)
    if chosen is None:
        chosen = default
        logger.info("multilingual Whisper without a language: transcribing as %r (the project's data is English); "
                    "pass --language to change it", default)
    code = str(chosen).strip("<|>").lower()
    if f"<|{code}|>" not in gen.lang_to_id:
        raise UserInputError(f"{what} {chosen!r}: not one of this Whisper's languages "
                             f"({', '.join(sorted(t.strip('<|>') for t in gen.lang_to_id)[:20])}, ...)")
    return code


def set_transcription_language(model, tokenizer=None, language: str | None = None, default: str = "en",
                               what: str = "language") -> str | None:
    """Fix what a Whisper transcribes as: for a multilingual model, the language `transcription_language` chooses
    (``language``, else the generation config's, else `default`, logged) and the task ``transcribe``, in its
    generation config and in `tokenizer`'s decoder prompt (`decoder_prompt_ids`), so that training targets and
    `generate` start from the same ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``. Without it
    `generate` would detect the language clip by clip. An English-only model (``.en``) takes no language token:
    returns None (and refuses a language other than English). Returns the language code used."""
    code = transcription_language(model, language, default, what)
    if code is None:
        return None
    gen = model.generation_config
    gen.language, gen.task = code, "transcribe"
    if tokenizer is not None and hasattr(tokenizer, "set_prefix_tokens"):
        tokenizer.set_prefix_tokens(language=code, task="transcribe", predict_timestamps=False)
    return code


def transcript_ids(tokenizer, text: str) -> list[int]:
    """The target tokens of one transcript: Whisper writes text after the prompt with a leading space (`` Hello``,
    token ``ĠHello``), then ``<|endoftext|>``."""
    return [*tokenizer(" " + " ".join(str(text).split()), add_special_tokens=False).input_ids, tokenizer.eos_token_id]


# ---- audio encoders as classifiers ------------------------------------------------------------------------------------

SPEECH_MODEL_TYPES = ("whisper", "wav2vec2", "hubert")


def is_speech_model(model_or_config) -> bool:
    """True for the speech families hfcompress knows (Whisper, wav2vec2, HuBERT), whatever their head."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in SPEECH_MODEL_TYPES


def is_audio_classifier(config) -> bool:
    """True if a config's ``architectures`` name a classifier over the encoder (``WhisperForAudioClassification``,
    ``Wav2Vec2ForSequenceClassification``, ...): its logits are per clip, even where the config is an
    encoder-decoder's (Whisper)."""
    archs = getattr(config, "architectures", None) or []
    return any(str(a).endswith(("ForAudioClassification", "ForSequenceClassification")) for a in archs)


def is_seq2seq(config) -> bool:
    """An encoder-decoder model (Whisper): its logits are `[batch, target tokens, vocabulary]`. A classifier on the
    encoder alone (`WhisperForAudioClassification`, whose config is still an encoder-decoder's) is not."""
    return bool(getattr(config, "is_encoder_decoder", False)) and not is_audio_classifier(config)


def is_ctc(model_or_config) -> bool:
    """A CTC speech model (wav2vec2 / HuBERT ``...ForCTC``): its logits are `[batch, frames, vocabulary]` and its labels
    character ids not aligned with the frames. Told by a model's class, or by a config's ``architectures`` (which
    `save_pretrained` writes, so a loaded model's config knows; a config built in memory does not)."""
    if isinstance(model_or_config, nn.Module):
        return type(model_or_config).__name__.endswith("ForCTC")
    return any(str(a).endswith("ForCTC") for a in getattr(model_or_config, "architectures", None) or ())


def audio_window_seconds(model_or_config) -> float | None:
    """The fixed audio window a model hears (Whisper: ``max_source_positions`` encoder positions, two mel frames of
    10 ms each: 1500 -> 30 s), or None for models that read clips of any length (wav2vec2, HuBERT)."""
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "model_type", None) != "whisper":
        return None
    return config.max_source_positions * 2 / 100


def fit_audio_window(model, feature_extractor, seconds: float):
    """Shorten a Whisper encoder's fixed window to `seconds` (whole seconds, at most the current window), in place:
    the first ``seconds * 50`` rows of its position table are kept, ``max_source_positions`` follows, and a feature
    extractor with ``chunk_length = seconds`` is returned (it pads or cuts every clip to that window). The encoder's
    cost falls with the window (attention quadratically): a keyword classifier needs 2 s, not 30. Saved and reloaded
    like any checkpoint (the config carries the new size). Other models are returned unchanged."""
    import torch.nn as nn

    current = audio_window_seconds(model)
    if current is None or seconds >= current:
        return feature_extractor
    if seconds != int(seconds) or seconds < 1:
        from ..errors import UserInputError

        raise UserInputError(f"audio window {seconds:g} s: expected a whole number of seconds from 1 to {current:g}")
    positions = int(seconds) * 50
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model.encoder
    old = encoder.embed_positions
    new = nn.Embedding(positions, old.embedding_dim)
    new.weight.data.copy_(old.weight.data[:positions])
    new.weight.requires_grad_(old.weight.requires_grad)
    encoder.embed_positions = new
    model.config.max_source_positions = positions
    encoder.max_source_positions = positions
    if hasattr(encoder, "config"):
        encoder.config.max_source_positions = positions
    fe = feature_extractor
    return type(fe)(feature_size=fe.feature_size, sampling_rate=fe.sampling_rate, hop_length=fe.hop_length,
                    chunk_length=int(seconds), n_fft=fe.n_fft, padding_value=fe.padding_value)
