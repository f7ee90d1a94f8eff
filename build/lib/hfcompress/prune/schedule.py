"""The sparsity schedule: warm-up, cubic ramp, cool-down (Zhu & Gupta 2017; Sanh et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """Sparsity 0 before `start`, ``final * (1 - (1 - p)^3)`` with ``p = (step - start) / (end - start)`` on the ramp,
    `final` from `end` on (the cool-down). Steps are optimizer steps (the Trainer's `global_step`)."""

    final: float
    start: int
    end: int

    def __call__(self, step: int) -> float:
        if step < self.start or self.final == 0:
            return 0.0
        if step >= self.end:
            return self.final
        p = (step - self.start) / max(1, self.end - self.start)
        return self.final * (1.0 - (1.0 - p) ** 3)

    def phase(self, step: int) -> str:
        return "warmup" if step < self.start else ("ramp" if step < self.end else "cooldown")


def masks_due(schedule: CubicSchedule, step: int, target: float, current: float, every: int, scores_move: bool) -> bool:
    """Whether a pruner recomputes its masks after optimizer step `step`.

    A new target: at once off the ramp (its first and last steps), every `every` steps on it. Scores that keep
    changing at a constant target (movement, taylor: the cool-down) may swap what is kept, every `every` steps."""
    periodic = step % every == 0
    on_ramp = schedule.start <= step < schedule.end
    new_target = target != current and (periodic or not on_ramp)
    return new_target or (scores_move and target > 0 and periodic)
