"""BERT-class text encoders."""

from .base import BERT_ATTENTION, ArchAdapter, AttentionLayout, StackLayout, register_adapter

BERT_LIKE = register_adapter(
    ArchAdapter(
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        layers_path="encoder.layer",
        stacks=(StackLayout("encoder.layer", "num_hidden_layers", (BERT_ATTENTION,), ("intermediate.dense", "output.dense")),),
    )
)
MPNET = register_adapter(
    ArchAdapter(
        model_types=("mpnet",),
        layers_path="encoder.layer",
        qkv_paths=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        attention_output_path="attention.attn.o",
        stacks=(
            StackLayout(
                "encoder.layer",
                "num_hidden_layers",
                (
                    AttentionLayout(
                        module="attention.attn", q="attention.attn.q", k="attention.attn.k", v="attention.attn.v",
                        o="attention.attn.o", count_attrs=("num_attention_heads",), width_attrs=("all_head_size",),
                        # relative position bias [batch, heads, seq, seq], computed once in the encoder for all layers
                        position_bias=("position_bias", 2),
                    ),
                ),
                ("intermediate.dense", "output.dense"),
            ),
        ),
    )
)
DISTILBERT = register_adapter(
    ArchAdapter(
        model_types=("distilbert",),
        layers_path="transformer.layer",
        num_layers_key="n_layers",
        hidden_size_key="dim",
        num_heads_key="n_heads",
        qkv_paths=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attention_output_path="attention.out_lin",
        ffn_paths=("ffn.lin1", "ffn.lin2"),
        stacks=(
            StackLayout(
                "transformer.layer",
                "n_layers",
                (AttentionLayout(module="attention", q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
                                 o="attention.out_lin", count_attrs=("n_heads",)),),
                ("ffn.lin1", "ffn.lin2"),
            ),
        ),
    )
)
