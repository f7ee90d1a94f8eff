"""BERT-class text encoders."""

from .base import ArchAdapter, register_adapter

BERT_LIKE = register_adapter(
    ArchAdapter(
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        layers_path="encoder.layer",
    )
)
MPNET = register_adapter(
    ArchAdapter(
        model_types=("mpnet",),
        layers_path="encoder.layer",
        qkv_paths=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        attention_output_path="attention.attn.o",
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
    )
)
