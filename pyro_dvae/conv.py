"""Convolutional frame encoders and decoders for square single-channel video frames.

Frames travel through the models flattened row-major, ``(..., D)`` with ``D = side²``; these
networks reshape them to ``(N, 1, side, side)`` images and back, so any leading dimensions
(batch, time) pass through.

* :class:`ConvEncoder`: ``len(channels)`` convolutions of stride 2 (k × k, "same" padding),
  each followed by the activation, halving the side every time; the last feature map is
  flattened.
* :class:`ConvDecoder`: a linear layer to the encoder's last feature map, then for each channel
  count in reverse a k × k convolution to four times as many channels with the activation and a
  sub-pixel shuffle that doubles the side (:func:`torch.nn.functional.pixel_shuffle`), then a
  1 × 1 convolution to one channel (the output, e.g. Bernoulli logits).

The shuffle moves single values: channel ``c·r² + i·r + j`` of pixel (h, w) to channel c of
pixel (r·h + i, r·w + j). Channels-last, that scatters every element. The decoder computes the
same numbers with its convolutions' output channels ordered ``(i·r + j)·C + c`` instead
(:class:`SubPixelConv2d`, the weights permuted on the fly, the parameters as PyTorch's), so that
its shuffle (:class:`SubPixelShuffle`) moves blocks of ``r·C`` contiguous values; and, since a
1 × 1 convolution commutes with the shuffle, the output convolution runs before the last
shuffle, on each sub-pixel's C channels (:func:`pointwise_per_sub_pixel`), which then shuffles
a one-channel-per-sub-pixel map instead of the widest one. A ReLU between them runs in place.

With ``channels = (32, 32, 32)``, k = 3 and ReLU on 32 × 32 frames these are the KVAE's
networks (Fraccaro et al. 2017, appendix; the authors' ``conv`` VAE): 32 → 16 → 8 → 4, a
512-feature code, and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyro_dvae.nn import activation_class


def frame_side(x_dim: int, n_halvings: int) -> int:
    """The side of square frames of ``x_dim`` pixels, checked to be divisible by
    ``2^n_halvings`` (one halving per convolution).

    Raises:
        ValueError: naming ``model.<modality>.conv_channels``, when it is empty, or when the
            frames are not square or their side does not halve that often.
    """
    if n_halvings < 1:
        raise ValueError(
            "model.<modality>.conv_channels is empty: expected the channels of at least one "
            "convolution (or model.encoder=dense)"
        )
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


def activation_layer(name: str) -> nn.Module:
    """The activation ``name`` of :data:`~pyro_dvae.nn.ACTIVATIONS`; ReLU in place (each follows
    a convolution, whose output nothing else reads, and saves one feature map's allocation)."""
    return nn.ReLU(inplace=True) if name == "relu" else activation_class(name)()


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
                activation_layer(activation),
            ]
        self.net = nn.Sequential(*layers)
        self.map_shape = (channels[-1], self.side >> len(channels), self.side >> len(channels))
        self.out_dim = math.prod(self.map_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(channels_last(x.reshape(-1, 1, self.side, self.side)))
        return h.reshape(*x.shape[:-1], self.out_dim)


class SubPixelConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` to ``r²·C`` channels (same parameters, same state-dict keys) whose output
    lists channel ``c·r² + s`` of ``nn.Conv2d``'s as channel ``s·C + c`` (sub-pixel
    s = i·r + j first), the order :class:`SubPixelShuffle` reads."""

    def __init__(self, *args, upscale: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.upscale = upscale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else sub_pixel_first(self.bias, self.upscale)
        return self._conv_forward(h, sub_pixel_first(self.weight, self.upscale), bias)


def sub_pixel_first(p: torch.Tensor, r: int) -> torch.Tensor:
    """Rows of ``p (r²·C, ...)`` reordered from ``c·r² + s`` to ``s·C + c``."""
    return p.unflatten(0, (-1, r * r)).transpose(0, 1).flatten(0, 1)


class SubPixelShuffle(nn.Module):
    """``h (N, r²·C, H, W)`` with channels in :class:`SubPixelConv2d`'s order ``s·C + c`` →
    ``(N, C, r·H, r·W)`` channels-last: pixel (r·h + i, r·w + j) of channel c is channel
    ``(i·r + j)·C + c`` of pixel (h, w), :func:`torch.nn.functional.pixel_shuffle`'s map."""

    def __init__(self, upscale: int) -> None:
        super().__init__()
        self.upscale = upscale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.upscale
        N, _, H, W = h.shape
        blocks = h.permute(0, 2, 3, 1).unflatten(-1, (r, -1)).transpose(2, 3)  # (N, H, i, W, j·C)
        return blocks.reshape(N, r * H, r * W, -1).permute(0, 3, 1, 2)


def pointwise_per_sub_pixel(h: torch.Tensor, conv: nn.Conv2d, r: int) -> torch.Tensor:
    """The 1 × 1 ``conv`` (C → O channels) of each sub-pixel's C channels of ``h (N, r²·C, H, W)``
    (channels in :class:`SubPixelConv2d`'s order) → ``(N, r²·O, H, W)`` in the same order:
    ``conv`` applied after :class:`SubPixelShuffle`, computed before it."""
    N, _, H, W = h.shape
    per_sub_pixel = h.permute(0, 2, 3, 1).unflatten(-1, (r * r, -1))  # (N, H, W, r², C)
    out = F.linear(per_sub_pixel, conv.weight.flatten(1), conv.bias)  # (N, H, W, r², O)
    return out.reshape(N, H, W, -1).permute(0, 3, 1, 2)


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
                SubPixelConv2d(c_in, 4 * c_out, kernel_size, padding=kernel_size // 2, upscale=2),
                activation_layer(activation),
                SubPixelShuffle(2),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        h = channels_last(self.linear(a).reshape(-1, *self.map_shape))
        *upsample, shuffle, out = self.net
        for layer in upsample:
            h = layer(h)
        h = shuffle(pointwise_per_sub_pixel(h, out, shuffle.upscale))
        return h.reshape(*a.shape[:-1], self.side * self.side)


__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "SubPixelConv2d",
    "SubPixelShuffle",
    "activation_layer",
    "check_kernel",
    "frame_side",
    "pointwise_per_sub_pixel",
]
