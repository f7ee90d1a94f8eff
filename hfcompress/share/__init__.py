"""Weight sharing (Deep Compression's trained quantization, Han et al. 2016): each weight matrix keeps k shared values
found by k-means (linear initialisation), the values are fine-tuned (gradients of the weights sharing one summed into
it), pruned zeros stay zero, and the checkpoint stores ``ceil(log2 k)``-bit indices plus a codebook per matrix.

    from hfcompress.share import WeightSharingCallback, WeightSharingConfig, save_shared, load_shared
    trainer = Trainer(..., callbacks=[WeightSharingCallback(WeightSharingConfig(weight_sharing_k=16))])
    trainer.train()
    save_shared(trainer.model, "out/model", tokenizer)   # packed; save_shared_dense for a plain checkpoint
    model = load_shared("out/model")                     # or hfcompress.load_model("out/model")

With distillation: `hfcompress share` (`scripts/share.py`), or the callback in a `DistillationTrainer`.
"""

from .callback import WeightSharingCallback
from .config import WeightSharingConfig
from .share_io import (
    SHARED_WEIGHTS_NAME,
    is_shared_checkpoint,
    load_shared,
    load_shared_state_dict,
    save_shared,
    save_shared_dense,
)
from .sharing import SHARING_KEY, WeightSharing, check_sharing, kmeans_1d, share_weights, sharing_targets

__all__ = [
    "SHARED_WEIGHTS_NAME",
    "SHARING_KEY",
    "WeightSharing",
    "WeightSharingCallback",
    "WeightSharingConfig",
    "check_sharing",
    "is_shared_checkpoint",
    "kmeans_1d",
    "load_shared",
    "load_shared_state_dict",
    "save_shared",
    "save_shared_dense",
    "share_weights",
    "sharing_targets",
]
