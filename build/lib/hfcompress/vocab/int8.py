"""Int8 word embeddings: weight-only int8 storage of the input embedding with one float32 scale per row.

Why: after vocabulary trimming (or instead of it) the word-embedding matrix is still stored in float32, 4 bytes a
weight. The rows are only *looked up*, never multiplied as a matrix, so storing them as int8 and dequantizing just the
rows a batch gathers costs almost nothing at run time and cuts the matrix to a quarter (plus 4 bytes a row for the
scale). Per-row symmetric scales (``scale = max|row| / 127``) bound the error of every weight by half a step of its
own row, ``scale / 2``, whatever the spread of magnitudes across rows.

A quantized model is not a plain transformers checkpoint any more: its state dict holds ``<name>.weight_int8`` (int8,
``[V, D]``) and ``<name>.scale`` (float32, ``[V]``) instead of ``<name>.weight``. `restore_int8_embeddings` puts an
`Int8Embedding` into a model built from its config so that ``model.load_state_dict(state_dict)`` then loads the whole
state dict (safetensors holds int8 tensors as they are).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..errors import UserInputError

logger = logging.getLogger(__name__)

CONFIG_KEY = "hfcompress_int8_embeddings"


class Int8Embedding(nn.Module):
    """An embedding stored as int8 rows with one scale per row; `forward` dequantizes only the gathered rows.

    Buffers (saved in the state dict): ``weight_int8`` (int8 ``[num_embeddings, embedding_dim]``) and ``scale``
    (``[num_embeddings]``, float32 unless the model was cast). The output has the dtype of ``scale``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = padding_idx
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=dtype, device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> "Int8Embedding":
        """Quantize an `nn.Embedding`: ``q = round(w / scale)`` in [-127, 127], ``scale = max|row| / 127`` (1 for an
        all-zero row)."""
        w = embedding.weight.detach().float()
        absmax = w.abs().amax(dim=1)
        scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        module = cls(w.shape[0], w.shape[1], padding_idx=embedding.padding_idx, device=w.device)
        module.weight_int8.copy_(q)
        module.scale.copy_(scale)
        if embedding.weight.dtype.is_floating_point and embedding.weight.dtype != torch.float32:
            module.scale.data = module.scale.data.to(embedding.weight.dtype)
        return module

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[input_ids].float() * self.scale[input_ids].float().unsqueeze(-1)
        return rows.to(self.scale.dtype)

    def dequantize(self) -> torch.Tensor:
        """The whole matrix in the dtype of ``scale`` (for measuring, or converting back to `nn.Embedding`)."""
        return (self.weight_int8.float() * self.scale.float()[:, None]).to(self.scale.dtype)

    def nbytes(self) -> int:
        return self.weight_int8.numel() * self.weight_int8.element_size() + self.scale.numel() * self.scale.element_size()

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, int8 rows, {self.scale.dtype} row scales"
                f"{'' if self.padding_idx is None else f', padding_idx={self.padding_idx}'}")


def _input_embedding_name(model: nn.Module) -> tuple[str, nn.Module]:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name, emb
    raise RuntimeError(f"{type(model).__name__}.get_input_embeddings() is not a submodule of the model")


def quantize_embeddings_int8(model: nn.Module) -> dict:
    """Replace the input word embedding of `model` by an `Int8Embedding`, in place; returns a report.

    Report: ``module`` (its name), ``shape``, ``bytes_before`` / ``bytes_after`` (the embedding's tensors),
    ``max_abs_error`` / ``mean_abs_error`` of the dequantized weights, ``max_rel_error`` (largest error of a row over
    the row's largest magnitude; at most 1/254 by construction). Records ``config.hfcompress_int8_embeddings``.
    A tied output embedding (language-model heads) is refused: the head would lose its shared weight.
    """
    name, emb = _input_embedding_name(model)
    if isinstance(emb, Int8Embedding):
        raise UserInputError(f"the input embedding {name} is already int8")
    if not isinstance(emb, nn.Embedding):
        raise UserInputError(f"the input embedding {name} of {type(model).__name__} is {type(emb).__name__}, "
                             "not nn.Embedding: cannot quantize it")
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is emb.weight:
        raise UserInputError(f"{type(model).__name__} ties its output embedding to the input embedding {name}: int8 "
                             "input embeddings would untie them. Quantize a model without a tied language-model "
                             "head (e.g. a ...ForSequenceClassification)")
    w = emb.weight.detach()
    bytes_before = w.numel() * w.element_size()
    q = Int8Embedding.from_embedding(emb)
    err = (q.dequantize().float() - w.float()).abs()
    row_max = w.float().abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    report = {
        "module": name,
        "shape": list(w.shape),
        "dtype_before": str(w.dtype).replace("torch.", ""),
        "bytes_before": int(bytes_before),
        "bytes_after": int(q.nbytes()),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_rel_error": float((err.amax(dim=1) / row_max).max()),
    }
    model.set_input_embeddings(q)
    setattr(model.config, CONFIG_KEY, {"module": name, "scheme": "int8 weight-only, symmetric, one scale per row",
                                          "keys": [f"{name}.weight_int8", f"{name}.scale"]})
    logger.info("Int8 embeddings %s %s: %d -> %d bytes, max abs error %.3g", name, report["shape"],
                report["bytes_before"], report["bytes_after"], report["max_abs_error"])
    return report


def restore_int8_embeddings(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Put the `Int8Embedding` of `state_dict` into `model` (e.g. built from the saved config), in place.

    Only the embedding's buffers are loaded here; the caller then loads the rest with
    ``model.load_state_dict(state_dict)``, whose keys now all match. Returns `model`."""
    name, emb = _input_embedding_name(model)
    keys = (f"{name}.weight_int8", f"{name}.scale")
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise UserInputError(f"the state dict has no int8 embedding {missing} (keys like {sorted(state_dict)[:3]}): "
                             "was it saved from a model quantized with quantize_embeddings_int8?")
    q_int8, scale = state_dict[keys[0]], state_dict[keys[1]]
    if q_int8.dtype != torch.int8 or q_int8.ndim != 2 or scale.shape != (q_int8.shape[0],):
        raise UserInputError(f"{keys[0]} must be int8 [V, D] and {keys[1]} [V]; got {q_int8.dtype} "
                             f"{list(q_int8.shape)} and {list(scale.shape)}")
    device = next(iter([*emb.parameters(), *emb.buffers()]), torch.empty(0)).device
    module = Int8Embedding(q_int8.shape[0], q_int8.shape[1], padding_idx=getattr(emb, "padding_idx", None),
                           device=device, dtype=scale.dtype)
    module.weight_int8.copy_(q_int8)
    module.scale.copy_(scale)
    model.set_input_embeddings(module)
    return model


def dequantize_embeddings(model: nn.Module) -> nn.Module:
    """Turn an `Int8Embedding` input embedding back into a plain `nn.Embedding` (the dequantized weights), so the
    model saves as an ordinary transformers checkpoint again; in place, returns `model`."""
    name, emb = _input_embedding_name(model)
    if not isinstance(emb, Int8Embedding):
        raise UserInputError(f"the input embedding {name} is not int8")
    plain = nn.Embedding(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx,
                         device=emb.scale.device, dtype=emb.scale.dtype)
    with torch.no_grad():
        plain.weight.copy_(emb.dequantize())
    model.set_input_embeddings(plain)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model
