"""Video-level prediction functions g over shot embeddings (Appendix A of the paper)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


@contextmanager
def native_cpu_rnn(x: Tensor) -> Iterator[None]:
    """Run an RNN on a CPU tensor with PyTorch's own kernels instead of oneDNN's.

    For the predictor's shape (8 videos x 3 shots of 512-d, 2 layers of 256) oneDNN's LSTM
    took 6-13 ms forward + backward against 5-6 ms native on one thread, the same values to
    1e-7 (benchmarks/results/step-overhead, session 7 section). The flag is process-wide, so it is
    switched off only for the call and restored after it; the backward runs the ops recorded.
    """
    if x.device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


class LSTMPredictor(nn.Module):
    """2-layer LSTM (256 units) reading shots 1..t and predicting the embedding of shot t+1.

    A linear layer maps the LSTM output (256) back to the shot-embedding size (512), as the
    paper does, so predictions are scored against embeddings by a dot product.
    """

    def __init__(self, dim: int = 512, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, dim)

    def forward(self, shots: Tensor) -> tuple[Tensor, Tensor]:
        """shots [V, K, D] -> (predictions [V, K-1, D] of shots 2..K, keys [V, K, D])."""
        with native_cpu_rnn(shots):
            hidden, _ = self.lstm(shots[:, :-1])
        return self.out(hidden), shots


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class MLPPairPredictor(nn.Module):
    """Two shots: score ``g(z_1) . h(z_2)`` with single-hidden-layer MLPs (256 hidden, 128 out)."""

    def __init__(self, dim: int = 512, hidden: int = 256, out: int = 128) -> None:
        super().__init__()
        self.g = _mlp(dim, hidden, out)
        self.h = _mlp(dim, hidden, out)

    def forward(self, shots: Tensor) -> tuple[Tensor, Tensor]:
        """shots [V, 2, D] -> (predictions [V, 1, out] from shot 1, keys h(shots) [V, 2, out])."""
        return self.g(shots[:, :1]), self.h(shots)


class OrderPredictor(nn.Module):
    """Shot order prediction: a single-hidden-layer MLP (512 units) on the K concatenated shot
    embeddings, returning one logit per video (positive: the sequence was reversed)."""

    def __init__(self, dim: int = 512, shots: int = 2, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = _mlp(dim * shots, hidden, 1)

    def forward(self, shots: Tensor) -> Tensor:
        """shots [V, K, D] -> logits [V]."""
        return self.mlp(shots.flatten(1)).squeeze(1)


def prediction_targets(num_videos: int, num_shots: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Ids for predictions of shots 2..K: (query video id, key video id, positive key index)."""
    query_video = torch.arange(num_videos, device=device).repeat_interleave(num_shots - 1)
    key_video = torch.arange(num_videos, device=device).repeat_interleave(num_shots)
    step = torch.arange(1, num_shots, device=device).repeat(num_videos)
    positive = query_video * num_shots + step
    return query_video, key_video, positive
