"""Convolutional frame encoders and decoders for square single-channel video frames.

Frames travel through the models flattened row-major, ``(..., D)`` with ``D = side²``; these
networks reshape them to ``(N, 1, side, side)`` images and back, so any leading dimensions
(batch, time) pass through.

* :class:`ConvEncoder`: ``len(channels)`` convolutions of stride 2 (k × k, "same" padding),
  each followed by the activation, halving the side every time; the last feature map is
  flattened.
* :class:`ConvDecoder`: a linear layer to the encoder's last feature map, then for each channel
  count in reverse a k × k convolution to four times as many channels with the activation and a
  sub-pixel shuffle that doubles the side (:class:`torch.nn.PixelShuffle`), then a 1 × 1
  convolution to one channel (the output, e.g. Bernoulli logits).

With ``channels = (32, 32, 32)``, k = 3 and ReLU on 32 × 32 frames these are the KVAE's
networks (Fraccaro et al. 2017, appendix; the authors' ``conv`` VAE): 32 → 16 → 8 → 4, a
512-feature code, and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_dvae.nn import ACTIVATIONS


def frame_side(x_dim: int, n_halvings: int) -> int:
    """The side of square frames of ``x_dim`` pixels, checked to be divisible by
    ``2^n_halvings`` (one halving per convolution).

    Raises:
        ValueError: naming ``model.<modality>.conv_channels``, when the frames are not square
            or their side does not halve that often.
    """
    side = math.isqrt(x_dim)
    if side * side != x_dim or side % 2**n_halvings:
        raise ValueError(
            f"model.<modality>.conv_channels has {n_halvings} layers: expected square frames "
            f"whose side is divisible by 2^{n_halvings}, got {x_dim} features per frame"
        )
    return side


def check_kernel(kernel_size: int) -> None:
    """Refuse an even or non-positive kernel size ("same" padding needs an odd one)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"model.<modality>.kernel_size={kernel_size}: expected an odd number >= 1")


def channels_last(h: torch.Tensor) -> torch.Tensor:
    """``h (N, C, H, W)`` stored channels-last: the same values, a layout in which CPU
    convolutions run about 1.4× faster here (the decoder's 3 × 3 convolutions dominate a KVAE
    step)."""
    return h.contiguous(memory_format=torch.channels_last)


class ConvEncoder(nn.Module):
    """Frames ``(..., side²)`` → features ``(..., out_dim)``,
    ``out_dim = channels[-1] · (side / 2^len(channels))²``.

    Args:
        x_dim: pixels per frame (a square of side divisible by ``2^len(channels)``).
        channels: output channels of each stride-2 convolution.
        kernel_size: k (odd).
        activation: ``relu`` or ``tanh``.
    """

    def __init__(
        self, x_dim: int, channels: Sequence[int], kernel_size: int = 3, activation: str = "relu"
    ) -> None:
        super().__init__()
        check_kernel(kernel_size)
        self.side = frame_side(x_dim, len(channels))
        layers: list[nn.Module] = []
        for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2),
                ACTIVATIONS[activation](),
            ]
        self.net = nn.Sequential(*layers)
        self.map_shape = (channels[-1], self.side >> len(channels), self.side >> len(channels))
        self.out_dim = math.prod(self.map_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(channels_last(x.reshape(-1, 1, self.side, self.side)))
        return h.reshape(*x.shape[:-1], self.out_dim)


class ConvDecoder(nn.Module):
    """Codes ``(..., in_dim)`` → frames ``(..., side²)`` (one output value per pixel).

    Args:
        in_dim: code size.
        x_dim: pixels per frame.
        channels: the encoder's channels, in the encoder's order (used in reverse).
        kernel_size: k (odd).
        activation: ``relu`` or ``tanh``.
    """

    def __init__(
        self,
        in_dim: int,
        x_dim: int,
        channels: Sequence[int],
        kernel_size: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_kernel(kernel_size)
        self.side = frame_side(x_dim, len(channels))
        small = self.side >> len(channels)
        self.map_shape = (channels[-1], small, small)
        self.linear = nn.Linear(in_dim, math.prod(self.map_shape))
        layers: list[nn.Module] = []
        c_in = channels[-1]
        for c_out in reversed(channels):
            layers += [
                nn.Conv2d(c_in, 4 * c_out, kernel_size, padding=kernel_size // 2),
                ACTIVATIONS[activation](),
                nn.PixelShuffle(2),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        h = self.linear(a).reshape(-1, *self.map_shape)
        return self.net(channels_last(h)).reshape(*a.shape[:-1], self.side * self.side)


__all__ = ["ConvDecoder", "ConvEncoder", "check_kernel", "frame_side"]
