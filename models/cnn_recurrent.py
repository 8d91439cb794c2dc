"""A CRNN-style text-line recogniser: convolutions to height 1, a bidirectional LSTM or GRU over the
columns, a Linear classifier per time step with log-probabilities for a CTC loss.

Two ways of turning the feature map into a sequence, as real recognisers write them: ``squeeze`` (CRNN:
``[N, C, 1, W] -> squeeze(2) -> permute(2, 0, 1)``) and ``reshape`` (``x.reshape(n, c * h, w)`` from the
run-time shape, then the same permute).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNAct

__all__ = ["CRNN"]


class CRNN(nn.Module):
    """[N, in_channels, height, width] -> [width / 4, N, num_classes] log-probabilities (CTC layout).

    Conv-BN-ReLU blocks, each followed by a max-pool that halves the height (and the width in the first
    two), bring the height to 1; the columns are the time steps of a 2-layer bidirectional ``rnn``
    ("lstm" or "gru")."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 64),
        hidden: int = 48,
        num_classes: int = 20,
        rnn: str = "lstm",
        to_sequence: str = "squeeze",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers += [ConvBNAct(cin, w, 3), nn.MaxPool2d((2, 2) if i < 2 else (2, 1))]
            cin = w
        self.features = nn.Sequential(*layers)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn]
        self.rnn = cls(cin, hidden, num_layers=2, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, num_classes)
        if to_sequence not in ("squeeze", "reshape"):
            raise ValueError(f"to_sequence must be 'squeeze' or 'reshape', got {to_sequence!r}")
        self.to_sequence = to_sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # [N, C, 1, W]
        if self.to_sequence == "squeeze":
            f = f.squeeze(2)
        else:
            n, c, h, w = f.shape
            f = f.reshape(n, c * h, w)
        seq = f.permute(2, 0, 1)  # [W, N, C]: time steps first
        y, _ = self.rnn(seq)  # [W, N, 2 * hidden]
        return torch.log_softmax(self.classifier(y), dim=2)
