"""Text encoders: BERT-class (BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT), MPNet, DistilBERT, ModernBERT (fused q/k/v,
gated FFN, global/local attention pattern) and DeBERTa v2/v3 (disentangled attention: content and position heads)."""

from ..errors import UserInputError
from .base import BERT_ATTENTION, ArchAdapter, AttentionLayout, StackLayout, get_submodule, register_adapter

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


# ---------------------------------------------------------------------------------------------------- ModernBERT
def _modernbert_check_layers(config, kept: list[int]) -> None:
    """Blocks `kept` (original indices) of a ModernBERT must include a global-attention block unless the local window
    covers every position: otherwise no token sees further than half the window, and the [CLS] token the classifier
    reads sees only the first tokens of a sequence."""
    types = list(getattr(config, "layer_types", None) or [])
    if not types or any(types[i] != "sliding_attention" for i in kept):
        return
    half = int(config.local_attention) // 2
    if half >= int(config.max_position_embeddings) - 1:
        return  # the window already covers any sequence the model takes
    globals_ = [i for i, t in enumerate(types) if t != "sliding_attention"]
    raise UserInputError(
        f"ModernBERT blocks {kept} are all sliding-window blocks: the local-attention window (local_attention="
        f"{config.local_attention}, {half} positions either side) no longer fits sequences of up to "
        f"max_position_embeddings={config.max_position_embeddings} once the global-attention blocks {globals_} are "
        f"removed; keep at least one of {globals_} (choose it among the student's layers, or lower the pruning "
        f"fraction / drop allow_layer_removal), or set local_attention >= {2 * (int(config.max_position_embeddings) - 1)}"
        " in the config if a window is really meant to cover every sequence"
    )


MODERNBERT_ATTENTION = AttentionLayout(
    # one fused Wqkv: rows [0:D] queries, [D:2D] keys, [2D:3D] values; the module reshapes with -1 heads and head_dim
    module="attn", q="attn.Wqkv", k="attn.Wqkv", v="attn.Wqkv", o="attn.Wo", count_attrs=(), head_dim_attr="head_dim",
)
MODERNBERT = register_adapter(
    ArchAdapter(
        model_types=("modernbert",),
        layers_path="layers",
        qkv_paths=("attn.Wqkv", "attn.Wqkv", "attn.Wqkv"),
        attention_output_path="attn.Wo",
        ffn_paths=("mlp.Wi", "mlp.Wo"),
        stacks=(
            StackLayout(
                "layers", "num_hidden_layers", (MODERNBERT_ATTENTION,), ("mlp.Wi", "mlp.Wo"),
                ffn_up_chunks=2,  # GeGLU: Wi rows [0:I] the input half, [I:2I] the gate half; a neuron is one of each
                layer_types_key="layer_types",  # global ("full_attention") / local ("sliding_attention") per block
                first_block_only=(("attn_norm", "mlp_norm"),),  # block 0 has no attention norm
                check_layers=_modernbert_check_layers,
            ),
        ),
    )
)


# ------------------------------------------------------------------------------------------------- DeBERTa v2/v3
DEBERTA_POSITION_PROJECTIONS = {"c2p": "pos_key_proj", "p2c": "pos_query_proj"}


def _deberta_check_model(model) -> None:
    """The ``share_att_key`` / ``pos_att_type`` settings whose heads the DeBERTa layout cuts consistently: with
    ``share_att_key=True`` relative positions go through ``query_proj`` / ``key_proj`` (cut with the content heads);
    with ``share_att_key=False`` through ``pos_key_proj`` (c2p) and ``pos_query_proj`` (p2c), cut the same way. Anything
    else (another ``pos_att_type`` entry, a per-head projection the layout does not name) is refused, named."""
    import torch.nn as nn

    config = model.config
    types = list(getattr(config, "pos_att_type", None) or [])
    unknown = [t for t in types if t not in DEBERTA_POSITION_PROJECTIONS]
    share = getattr(config, "share_att_key", False)
    handled = ("share_att_key=True (positions through query_proj/key_proj) or share_att_key=False with pos_att_type "
               "among c2p (pos_key_proj) and p2c (pos_query_proj)")
    if unknown or not isinstance(share, bool):
        raise UserInputError(
            f"DeBERTa with share_att_key={share!r}, pos_att_type={types}: "
            f"{'pos_att_type ' + str(unknown) if unknown else 'share_att_key (not a bool)'} is not handled by "
            f"hfcompress's DeBERTa layout; it handles {handled}")
    known = {"query_proj", "key_proj", "value_proj", *DEBERTA_POSITION_PROJECTIONS.values()}
    for i, block in enumerate(get_submodule(model.base_model, "encoder.layer")):
        att = block.attention.self
        extra = [n for n, m in att.named_children() if isinstance(m, nn.Linear) and n not in known]
        if extra:
            raise UserInputError(
                f"DeBERTa block {i} has projections {extra} beside q/k/v (share_att_key={share}, pos_att_type={types})"
                f": not handled by hfcompress's DeBERTa layout, which handles {handled}")


DEBERTA_V2 = register_adapter(
    ArchAdapter(
        model_types=("deberta-v2",),
        layers_path="encoder.layer",
        qkv_paths=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        stacks=(
            StackLayout(
                "encoder.layer", "num_hidden_layers",
                (AttentionLayout(
                    module="attention.self", q="attention.self.query_proj", k="attention.self.key_proj",
                    v="attention.self.value_proj", o="attention.output.dense", count_attrs=("num_attention_heads",),
                    width_attrs=("all_head_size",),
                    # share_att_key=False: relative positions get their own per-head projections (built by config)
                    extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
                ),),
                ("intermediate.dense", "output.dense"),
            ),
        ),
        check_model=_deberta_check_model,
    )
)
