"""Video-level prediction functions g over shot embeddings (Appendix A of the paper)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def lstm_unrolled(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """The output ``[B, T, H]`` of a batch-first, one-way ``lstm`` run from a zero state on ``x`` ``[B, T, D]``,
    computed from its own weights in plain tensor ops.

    Each layer projects the inputs of all T steps in one matrix product, so the backward writes each
    input weight's gradient once instead of once per step, and the first step skips the product with
    its zero state. At the predictor's size (8 videos x 3 shots of 512-d, 2 layers of 256) forward +
    backward took 4.1-4.9 ms against 5.2-6.7 with PyTorch's native CPU LSTM and 13-14 with oneDNN's
    (1 thread, 4 alternated rounds), with the same values to 1e-7; and no process-wide switch is
    flipped to keep oneDNN's kernels out.
    """
    if not lstm.batch_first or lstm.bidirectional or lstm.proj_size or (lstm.dropout and lstm.training):
        raise ValueError("lstm_unrolled covers batch-first, one-way LSTMs without projections or dropout")
    b, steps, _ = x.shape
    hidden = lstm.hidden_size
    out = x
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}") if lstm.bias else None
        flat = out.reshape(b * steps, -1)
        # addmm, not a product then a sum: under autocast the bias joins the product's precision
        projected = (flat @ w_ih.t() if bias is None else torch.addmm(bias, flat, w_ih.t())).view(b, steps, 4 * hidden)
        h: Tensor | None = None
        c: Tensor | None = None
        outputs = []
        for t in range(steps):
            gates = projected[:, t] if h is None else torch.addmm(projected[:, t], h, w_hh.t())
            i, f, g, o = gates.chunk(4, 1)  # PyTorch's gate order
            i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
            c = i * g.tanh() if c is None else torch.addcmul(i * g.tanh(), f, c)
            h = o * c.tanh()
            outputs.append(h)
        out = torch.stack(outputs, 1)
    return out


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
        return self.out(lstm_unrolled(self.lstm, shots[:, :-1])), shots


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class MLPPairPredictor(nn.Module):
    """Two shots: score ``g(z_1) . h(z_2)`` with single-hidden-layer MLPs (256 hidden, 128 out).

    The paper (Section 4) says only that one shot is predicted "from the embedding of the other
    one"; we predict the second from the first (one direction, one query per video), and the
    candidates are ``h`` of both shots of every other video (footnote 2)."""

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
