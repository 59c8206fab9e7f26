"""An exponential moving average (EMA) of a model's weights, with timm ``ModelEmaV3``'s warmup rule.

After optimizer step ``t`` (1-based) every floating-point tensor of the state dict moves towards the
trained model's: ``ema = decay_t * ema + (1 - decay_t) * weights`` with
``decay_t = min(decay, 1 - t ** -power)`` (so ``decay_1 = 0``: the first update copies).
The warmup lets a short run's average forget the random initialisation quickly; ``decay`` caps it.
Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The average lives in its own copy
of the model (``.module``), in eval mode and without gradients, so it can be validated and saved
like any model; its tensors travel in the resumable state under ``ema/<name>``.
"""

from __future__ import annotations

import copy

import torch


class WeightEMA:
    """EMA of ``model``'s parameters and floating buffers (see the module docstring for the rule)."""

    def __init__(self, model: torch.nn.Module, *, decay: float = 0.998, warmup_power: float = 2 / 3) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup_power = warmup_power
        self.updates = 0

    def decay_at(self, step: int) -> float:
        """The decay used by the ``step``-th update (1-based)."""
        if step <= 1:
            return 0.0
        return min(self.decay, 1.0 - float(step) ** -self.warmup_power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one optimizer step towards ``model`` (the unwrapped module, not a DDP wrapper)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                average.lerp_(value.to(average.dtype), weight)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = int(updates)
