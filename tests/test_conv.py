"""pyro_dvae.conv: the frame-size and kernel checks and their messages, the activation layer,
the channels-last layout, the sub-pixel channel order (:func:`sub_pixel_first`,
:class:`SubPixelConv2d`), the shuffle and the pointwise convolution before it against explicit
loops, and the encoder and decoder against hand-computed frames, a numpy loop and PyTorch's
plain layers.

Where the weights and inputs are small integers in float64 every sum is exact, whatever order
the convolution adds in, so those comparisons are exact (``torch.equal``)."""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyro_dvae.conv import (
    ConvDecoder,
    ConvEncoder,
    SubPixelConv2d,
    SubPixelShuffle,
    activation_layer,
    channels_last,
    check_kernel,
    frame_side,
    pointwise_per_sub_pixel,
    sub_pixel_first,
)
from pyro_dvae.nn import ACTIVATIONS

B, T = 3, 5
"""Batch size and sequence length of the videos through both networks."""


def integers(*shape: int) -> torch.Tensor:
    """Float64 integers in [−3, 3]: products and sums of a few of them are exact."""
    return torch.randint(-3, 4, shape).double()


def integer_parameters(module: nn.Module) -> None:
    """Every parameter of ``module`` set to :func:`integers`."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(integers(*p.shape))


def test_frame_side_is_the_side_of_square_frames():
    assert [frame_side(1024, 3), frame_side(36, 1), frame_side(196, 1)] == [32, 6, 14]


@pytest.mark.parametrize("network", [ConvEncoder, ConvDecoder])
def test_no_convolutions_names_the_key(network):
    message = (
        "model.<modality>.conv_channels is empty: expected the channels of at least one "
        "convolution (or model.encoder=dense)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        network(*((64,) if network is ConvEncoder else (4, 64)), [])


@pytest.mark.parametrize("x_dim,layers", [(48, 1), (36, 2), (1024, 6)])
def test_frames_that_are_not_square_or_do_not_halve_name_the_key(x_dim: int, layers: int):
    message = (
        f"model.<modality>.conv_channels has {layers} layers: expected square frames whose "
        f"side is divisible by 2^{layers}, got {x_dim} features per frame"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        frame_side(x_dim, layers)


def test_odd_positive_kernels_are_accepted():
    for k in (1, 3, 5, 7):
        check_kernel(k)


@pytest.mark.parametrize("k", [-1, 0, 2, 4])
def test_even_or_non_positive_kernels_name_the_key(k: int):
    message = f"model.<modality>.kernel_size={k}: expected an odd number >= 1"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_kernel(k)


def test_relu_runs_in_place_and_tanh_is_the_librarys():
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64)
    assert activation_layer("relu")(x) is x
    assert torch.equal(x, torch.tensor([0.0, 0.0, 0.5, 3.0], dtype=torch.float64))
    assert type(activation_layer("tanh")) is ACTIVATIONS["tanh"]
    message = "model.<modality>.activation='sigmoid': expected one of ['tanh', 'relu']"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        activation_layer("sigmoid")


def test_channels_last_keeps_the_values_in_another_layout():
    h = torch.arange(2.0 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = channels_last(h)
    assert torch.equal(out, h)
    assert out.stride() == (4 * 5 * 3, 1, 5 * 3, 3)  # (N, H, W, C) in memory


def test_sub_pixel_first_lists_row_c_r2_plus_s_as_s_c_plus_c():
    """r = 2, C = 3: row s·3 + c of the result is row c·4 + s of the input."""
    rows = sub_pixel_first(torch.arange(12), 2)
    assert rows.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


@pytest.mark.parametrize("bias", [True, False])
def test_sub_pixel_conv_is_conv2d_with_its_channels_sub_pixel_first(bias: bool):
    """r = 2, C = 3 output channels per sub-pixel: channel s·C + c is channel c·r² + s of the
    plain convolution of the same parameters, which keep ``nn.Conv2d``'s names."""
    conv = SubPixelConv2d(2, 12, 3, padding=1, bias=bias, upscale=2).double()
    integer_parameters(conv)
    h = integers(2, 2, 4, 5)
    plain = F.conv2d(h, conv.weight, conv.bias, padding=1)
    expected = torch.stack([plain[:, c * 4 + s] for s in range(4) for c in range(3)], dim=1)
    assert torch.equal(conv(h), expected)
    assert list(conv.state_dict()) == list(nn.Conv2d(2, 12, 3, bias=bias).state_dict())


def shuffled_by_loop(h: torch.Tensor, r: int) -> torch.Tensor:
    """Pixel (r·y + i, r·x + j) of channel c is channel (i·r + j)·C + c of pixel (y, x)."""
    N, channels, H, W = h.shape
    C = channels // (r * r)
    out = torch.empty(N, C, r * H, r * W, dtype=h.dtype)
    for c in range(C):
        for i in range(r):
            for j in range(r):
                out[:, c, i::r, j::r] = h[:, (i * r + j) * C + c]
    return out


@pytest.mark.parametrize("r", [2, 3])
def test_sub_pixel_shuffle_moves_each_value_as_the_loop_does(r: int):
    """Distinct values on a 2 × 3 map of C = 2, so any value out of place shows; the output is
    stored channels-last."""
    h = torch.arange(2.0 * r * r * 2 * 2 * 3).reshape(2, r * r * 2, 2, 3)
    out = SubPixelShuffle(r)(h)
    assert torch.equal(out, shuffled_by_loop(h, r))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_per_sub_pixel_is_the_1x1_convolution_after_the_shuffle():
    """r = 2, C = 3 → O = 2: each sub-pixel's C channels convolved on their own, and the
    shuffle of that is the convolution of the shuffled map."""
    r, C = 2, 3
    conv = nn.Conv2d(C, 2, 1).double()
    integer_parameters(conv)
    h = integers(2, r * r * C, 2, 3)
    got = pointwise_per_sub_pixel(h, conv, r)
    per_sub_pixel = [conv(h[:, s * C : (s + 1) * C]) for s in range(r * r)]
    assert torch.equal(got, torch.cat(per_sub_pixel, dim=1))
    assert torch.equal(SubPixelShuffle(r)(got), conv(SubPixelShuffle(r)(h)))


def test_conv_encoder_is_a_strided_zero_padded_convolution_then_the_activation():
    """One layer, k = 5 ("same" padding 2), stride 2 on 6 × 6 frames → 2 channels of 3 × 3,
    against the sum written out over the zero-padded frame in numpy; batch and time dimensions
    pass through."""
    encoder = ConvEncoder(36, [2], kernel_size=5).double()
    integer_parameters(encoder)
    x = integers(2, 2, 36)
    padded = np.pad(x.reshape(4, 6, 6).numpy(), ((0, 0), (2, 2), (2, 2)))
    weight, bias = encoder.net[0].weight.detach().numpy(), encoder.net[0].bias.detach().numpy()
    expected = np.zeros((4, 2, 3, 3))
    for o in range(2):
        for i in range(3):
            for j in range(3):
                window = padded[:, 2 * i : 2 * i + 5, 2 * j : 2 * j + 5]
                expected[:, o, i, j] = bias[o] + (weight[o, 0] * window).sum(axis=(1, 2))
    expected = np.maximum(expected, 0).reshape(2, 2, 18)
    assert encoder.map_shape == (2, 3, 3) and encoder.out_dim == 18
    assert torch.equal(encoder(x), torch.from_numpy(expected))


def test_conv_encoder_reads_row_major_frames_with_stride_two():
    """One layer whose kernel picks its centre pixel: with stride 2 and 'same' padding the
    output at (i, j) is pixel (2i, 2j) of the frame read row by row."""
    encoder = ConvEncoder(36, [1], kernel_size=3).double()
    with torch.no_grad():
        encoder.net[0].weight.zero_()
        encoder.net[0].weight[0, 0, 1, 1] = 1.0
        encoder.net[0].bias.zero_()
    x = torch.rand(2, 3, 36, dtype=torch.float64)
    expected = x.reshape(2, 3, 6, 6)[..., ::2, ::2].reshape(2, 3, 9)
    torch.testing.assert_close(encoder(x), expected)


def test_conv_decoder_upsamples_by_sub_pixel_shuffle():
    """Map m (2 × 2) from the linear layer, a 1 × 1 conv to 4 channels with weights 1..4, ReLU,
    shuffle, 1 × 1 conv of weight 1: pixel (2i + r, 2j + c) is (2r + c + 1) · m[i, j]."""
    decoder = ConvDecoder(4, 16, [1], kernel_size=1).double()
    with torch.no_grad():
        decoder.linear.weight.copy_(torch.eye(4))
        decoder.linear.bias.zero_()
        decoder.net[0].weight.copy_(torch.arange(1.0, 5.0).reshape(4, 1, 1, 1))
        decoder.net[0].bias.zero_()
        decoder.net[3].weight.fill_(1.0)
        decoder.net[3].bias.zero_()
    m = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    expected = torch.kron(m.reshape(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=m.dtype))
    torch.testing.assert_close(decoder(m), expected.reshape(1, 16))


def plain_conv_networks(activation: str) -> tuple[nn.Sequential, nn.ModuleDict]:
    """The encoder and decoder of ``conv_channels=[2, 3]``, k = 3 on 8 × 8 frames written with
    PyTorch's own layers (``nn.PixelShuffle``, the 1 × 1 convolution after it), float64."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    encoder = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        act(),
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        act(),
    )
    decoder_net = nn.Sequential(
        *(nn.Conv2d(3, 12, 3, padding=1), act(), nn.PixelShuffle(2)),
        *(nn.Conv2d(3, 8, 3, padding=1), act(), nn.PixelShuffle(2)),
        nn.Conv2d(2, 1, 1),
    )
    decoder = nn.ModuleDict({"linear": nn.Linear(2, 12), "net": decoder_net})
    return encoder.double(), decoder.double()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_conv_networks_compute_what_pytorchs_plain_layers_do(activation):
    """Encoder → a fixed linear map to a code → decoder, against the same chain of PyTorch's
    plain layers loaded from the same state dicts (strict: the same keys): the frames and the
    gradient of every parameter, despite the decoder's sub-pixel channel order, its output
    convolution before the last shuffle and the in-place ReLUs. No layer has r² = 4 channels,
    where the orders c·r² + s and s·C + c would coincide."""
    torch.manual_seed(0)
    encoder = ConvEncoder(64, [2, 3], 3, activation).double()
    decoder = ConvDecoder(2, 64, [2, 3], 3, activation).double()
    plain_encoder, plain_decoder = plain_conv_networks(activation)
    plain_encoder.load_state_dict(
        {k.removeprefix("net."): v for k, v in encoder.state_dict().items()}
    )
    plain_decoder.load_state_dict(decoder.state_dict())
    x, to_code = torch.rand(B, T, 64, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    upstream = torch.randn(B, T, 64, dtype=torch.float64)

    def plain(x: torch.Tensor) -> torch.Tensor:
        a = plain_encoder(x.reshape(-1, 1, 8, 8)).reshape(B, T, 12) @ to_code
        h = plain_decoder["linear"](a).reshape(-1, 3, 2, 2)
        return plain_decoder["net"](h).reshape(B, T, 64)

    params = [*encoder.parameters(), *decoder.parameters()]
    plain_params = [*plain_encoder.parameters(), *plain_decoder.parameters()]
    y, want_y = decoder(encoder(x) @ to_code), plain(x)
    got = torch.autograd.grad((y * upstream).sum(), params)
    want = torch.autograd.grad((want_y * upstream).sum(), plain_params)
    # float64, O(1) values, the same sums of at most 9 · 3 products per layer in another order:
    # rounding ~1e-15; a pixel, channel or sub-pixel out of place is off by O(0.1)
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
