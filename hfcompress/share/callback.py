"""`WeightSharingCallback`: weight sharing in any `Trainer` (plain, or hfcompress's `DistillationTrainer` for
sharing with distillation). It clusters the model's matrices when training begins (after a resumed run's weights are
loaded: those are adopted as they are), sums the gradients of each shared value before every optimizer step and puts
the weights back on their values after it (see `hfcompress.share.sharing`). No parameter is added, so the optimizer
the Trainer already built needs nothing new.

    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[WeightSharingCallback(
        WeightSharingConfig(weight_sharing_k=16))])
    trainer.train()
    save_shared(trainer.model, "out/model", tokenizer)      # 4-bit indices + codebooks
"""

from __future__ import annotations

from transformers import TrainerCallback

from .config import WeightSharingConfig
from .sharing import WeightSharing, share_weights


class WeightSharingCallback(TrainerCallback):
    def __init__(self, config: WeightSharingConfig | None = None, **kwargs):
        self.config = config or WeightSharingConfig(**kwargs)
        self.sharing: WeightSharing | None = None
        self.summary: dict = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # a resumed run (global_step > 0) loaded weights that already share: adopt them, k-means would move them
        self.sharing = share_weights(model, self.config, adopt=state.global_step > 0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.sharing is not None:
            self.sharing.sum_gradients()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.sharing is not None:
            self.sharing.snap()

    def on_train_end(self, args, state, control, **kwargs):
        if self.sharing is not None:
            self.summary = self.sharing.summary()
