"""One VTAB fine-tune run: a copy of the backbone plus a fresh linear head, trained end to end.

As VTAB's lightweight protocol does: SGD with momentum 0.9, no weight decay, batch size
fixed per scale, the learning rate divided by 10 at 30%, 60% and 90% of the steps, images
only resized to the model's resolution (no augmentation). The head starts at zero, so two
runs with the same seed differ only through the batches they draw.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vivi.data.augment import network_input
from vivi.data.tasks import ImageSplit
from vivi.train.optimizer import sgd
from vivi.evaluate.metrics import accuracy

MOMENTUM = 0.9
DECAY_AT = (0.3, 0.6, 0.9)  # fractions of the steps where the learning rate drops 10x
DECAY_FACTOR = 0.1
EVAL_BATCH = 256


@dataclass(frozen=True)
class FinetuneSetting:
    """One point of the sweep: a base learning rate and a number of steps."""

    lr: float
    steps: int

    @property
    def key(self) -> str:
        """Stable name used in results files (``lr=0.01,steps=2500``)."""
        return f"lr={self.lr:g},steps={self.steps}"


def step_decay_lr(setting: FinetuneSetting, step: int) -> float:
    """Learning rate of 0-based ``step``: base, then x0.1 after each of 30%, 60%, 90% of the steps."""
    drops = sum(step >= round(f * setting.steps) for f in DECAY_AT)
    return setting.lr * DECAY_FACTOR**drops


def preload(split: ImageSplit, image_size: int, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Every image of ``split`` resized once to uint8 ``[n, 3, S, S]`` (fine-tuning revisits them many times)."""
    chunks = [
        split.images(np.arange(s, min(s + batch_size, len(split))), size=image_size)
        for s in range(0, len(split), batch_size)
    ]
    return torch.cat(chunks)


def _inputs(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return network_input(images.to(device))


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Index batches for ``steps`` steps: successive epochs of seeded permutations, drop nothing."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        yield order[:batch_size]
        order = order[batch_size:]


def finetune(
    backbone: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    setting: FinetuneSetting,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    desc: str | None = None,
) -> nn.Module:
    """Train a deep copy of ``backbone`` + a zero-initialised linear head; returns the classifier.

    ``images`` are preloaded uint8 ``[n, 3, S, S]`` at the model's resolution. The
    backbone passed in is left untouched. The batch is capped at the number of examples.
    ``desc`` shows a progress bar with that label.
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    head = nn.Linear(_feature_dim(model, images[:1], device), num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    classifier = nn.Sequential(model, head).train()
    opt = sgd(classifier.parameters(), lr=setting.lr, momentum=MOMENTUM)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(len(y), min(batch_size, len(y)), setting.steps, gen)
    bar = tqdm(total=setting.steps, desc=desc, unit="step", leave=False, disable=desc is None)
    for step, idx in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = step_decay_lr(setting, step)
        loss = nn.functional.cross_entropy(classifier(_inputs(images[idx], device)), y[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tune {setting.key}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    return classifier.eval()


def _feature_dim(model: nn.Module, one: torch.Tensor, device: str | torch.device) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = model(_inputs(one, device)).shape[1]
    model.train(was_training)
    return int(dim)


def predict(classifier: nn.Module, images: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """Predicted labels of preloaded uint8 images, in eval mode (BatchNorm on running statistics)."""
    classifier.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), EVAL_BATCH):
            out.append(classifier(_inputs(images[s : s + EVAL_BATCH], device)).argmax(dim=1).cpu())
    return torch.cat(out).numpy()

