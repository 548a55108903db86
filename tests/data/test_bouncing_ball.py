"""The bouncing-ball simulator, its renderer and the video task."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_dvae.data import build_task
from pyro_dvae.data.bouncing_ball import advance, render_frames, simulate
from tests.test_runner import compose_config

SMALL = dict(n_train=6, n_val=3, n_test=3, seq_len=20)


def test_a_ball_at_the_wall_bounces_back_elastically():
    p, v = np.array([[4.0, 10.0], [27.0, 10.0]]), np.array([[-2.0, 0.5], [1.5, 0.0]])
    p, v = advance(p, v, low=3.0, high=29.0, gravity=0.0)
    np.testing.assert_allclose(p, [[4.0, 10.5], [28.5, 10.0]])  # x 2 → reflected to 4
    np.testing.assert_allclose(v, [[2.0, 0.5], [1.5, 0.0]])
    p, v = advance(p, v, low=3.0, high=29.0, gravity=0.0)
    np.testing.assert_allclose(p, [[6.0, 11.0], [28.0, 10.0]])  # x 30 → reflected to 28
    np.testing.assert_allclose(v, [[2.0, 0.5], [-1.5, 0.0]])
    p, v = advance(p, v, low=3.0, high=29.0, gravity=0.0)
    np.testing.assert_allclose(p, [[8.0, 11.5], [26.5, 10.0]])


def test_gravity_accelerates_downwards():
    p, v = advance(np.array([[10.0, 10.0]]), np.array([[0.0, 1.0]]), 3.0, 29.0, gravity=0.5)
    np.testing.assert_allclose(v, [[0.0, 1.5]])
    np.testing.assert_allclose(p, [[10.0, 11.5]])


def test_simulated_balls_stay_in_the_box_at_constant_speed():
    positions = simulate(50, 40, np.random.default_rng(0), size=32, radius=3.0, speed=(1, 2))
    assert positions.shape == (50, 40, 2)
    assert positions.min() >= 3.0 and positions.max() <= 29.0
    steps = np.linalg.norm(np.diff(positions, axis=1), axis=-1)
    speed = steps.max(axis=1)  # a bounce only shortens the displacement of its frame
    assert np.all((speed >= 1.0) & (speed <= 2.0))
    assert np.median(np.abs(steps - speed[:, None])) < 1e-9


def test_frames_are_discs_around_the_centre():
    centre = np.array([[10.3, 20.6]])
    frame = render_frames(centre, size=32, radius=3.0)[0].reshape(32, 32)
    rows, cols = np.nonzero(frame)
    assert frame.dtype == np.uint8 and set(np.unique(frame)) == {0, 1}
    assert abs(len(rows) - math.pi * 9) < 4
    np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], centre[0], atol=0.3)
    assert frame[20, 10] == 1 and frame[20, 14] == 0 and frame[24, 10] == 0


def test_splits_are_seeded_and_distinct():
    a, b = build_task("bouncing_ball", **SMALL), build_task("bouncing_ball", **SMALL)
    other = build_task("bouncing_ball", **SMALL, seed=1)
    assert torch.equal(a.train.frames, b.train.frames)
    assert not torch.equal(a.train.frames, other.train.frames)
    assert not torch.equal(a.val.frames, a.test.frames)
    x = a.train.batch(torch.tensor([2, 0]))
    assert x.dtype == torch.float32 and x.shape == (2, 20, 1024)
    assert torch.equal(x[1], a.train[0])


def test_evaluate_scores_pixels_and_draws_reconstructions(tmp_path):
    task = build_task("bouncing_ball", **SMALL)
    perfect = task.evaluate(lambda x: x, tmp_path)
    assert perfect["pixel_error"] == 0 and perfect["n_sequences"] == 3
    blank = task.evaluate(lambda x: torch.full_like(x, 0.25), tmp_path)
    ball = task.test.frames.float().mean().item()
    assert blank["pixel_error"] == pytest.approx(ball)
    assert blank["nll_per_frame"] == pytest.approx(
        1024 * -(ball * math.log(0.25) + (1 - ball) * math.log(0.75)), rel=1e-5)
    assert (tmp_path / "reconstructions.png").stat().st_size > 0


def test_render_writes_a_gif_with_one_page_per_frame(tmp_path):
    task = build_task("bouncing_ball", **SMALL)
    gif, strip = task.render(task.test.batch(torch.arange(3)), tmp_path)
    with Image.open(gif) as image:
        assert image.n_frames == 20
        assert image.size == (3 * (3 * 32) + 2 * 3, 3 * 32)
    assert strip.stat().st_size > 0


@pytest.mark.parametrize(
    "option,message",
    [
        (dict(modality="speech"), "data.modality"),
        (dict(n_val=0), "data.n_val"),
        (dict(seq_len=1), "data.seq_len"),
        (dict(radius=16.0), "data.radius"),
        (dict(speed=[2.0, 1.0]), "data.speed"),
    ],
)
def test_bad_options_name_the_key(option, message):
    with pytest.raises(ValueError, match=message):
        build_task("bouncing_ball", **{**SMALL, **option})


def test_the_config_selects_video_defaults():
    cfg = compose_config(["data=bouncing_ball"])
    assert cfg.data.modality == "video" and cfg.data.size == 32
    assert cfg.modality_defaults.video.epochs > 0
