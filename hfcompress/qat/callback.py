"""`QATCallback`: quantization-aware training in any `Trainer`. When the Trainer is built (or, for a callback added
later, at train begin) it makes the model's layers fake-quantized (`apply_qat`: a class change, no new parameter, so
an optimizer built from the model stays valid; a no-op when the run already did it). Applied when the Trainer is
built, the layers' learned activation ranges (buffers) exist before `train(resume_from_checkpoint=...)` loads a
checkpoint, so a resumed run continues from the ranges it saved instead of starting them again. With distillation from a plain `Trainer`, add hfcompress's `DistillationLoss`
(``compute_loss_func=kd.attach(student)``) and `DistillationCallback` as usual.

    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[QATCallback(QATConfig(qat_weight_bits=2))])
    trainer.train()
    save_qat(trainer.model, "out/model", tokenizer)      # 2-bit codes + a scale per row
"""

from __future__ import annotations

from transformers import TrainerCallback

from .config import QATConfig
from .modules import apply_qat


class QATCallback(TrainerCallback):
    def __init__(self, config: QATConfig | None = None, **kwargs):
        self.config = config or QATConfig(**kwargs)
        self.layers: dict[str, int] = {}

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.layers = apply_qat(model, self.config)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.layers:  # added after the Trainer was built
            self.layers = apply_qat(model, self.config)
