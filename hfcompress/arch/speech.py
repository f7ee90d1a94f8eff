"""Speech models: Whisper (encoder-decoder) and wav2vec2 / HuBERT (encoders over audio features).

Their attentions share one layout, ``q_proj/k_proj/v_proj/out_proj`` with ``num_heads`` and ``head_dim``; Whisper
reshapes keys and values with ``num_heads`` (slicing the projections alone is not enough), wav2vec2 and HuBERT with
``-1``. Distillation of these families is not wired yet; structured pruning is.
"""

from .base import ArchAdapter, AttentionLayout, StackLayout, register_adapter


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
