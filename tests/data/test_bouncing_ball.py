"""The bouncing-ball simulator, its renderer and the video task."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_dvae.data import build_task
from pyro_dvae.data.base import DECISION_BAND, ROUNDING_INTERVALS
from pyro_dvae.data.bouncing_ball import (
    advance,
    block_mask,
    missing_pixel_error,
    random_mask,
    render_frames,
    simulate,
)
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
        1024 * -(ball * math.log(0.25) + (1 - ball) * math.log(0.75)), rel=1e-5
    )
    assert (tmp_path / "reconstructions.png").stat().st_size > 0


def test_pixel_error_gives_its_range_if_the_pixels_near_one_half_flipped(tmp_path):
    """The perfect reconstruction moved to within DECISION_BAND of ½ at 5 pixels (a ball pixel
    just below ½ and a background pixel just above: 2 wrong) and to 2–4 bands below ½ at 3
    more background pixels (right): 2 of N pixels wrong, and on another machine anything from
    0 to 2 + 5."""
    task = build_task("bouncing_ball", **SMALL)
    band = DECISION_BAND
    x = task.test.frames.float()
    on = x.flatten().nonzero()[0, 0].item()
    off = (x.flatten() == 0).nonzero()[:7, 0].tolist()
    near = {on: 0.5 - band, off[0]: 0.5 + band, off[1]: 0.5, off[2]: 0.5 - band / 2, off[3]: 0.5}
    outside = {off[4]: 0.5 - 2 * band, off[5]: 0.5 - 3 * band, off[6]: 0.5 - 4 * band}

    def nudged(batch):
        p = batch.clone().flatten()
        if len(batch) == len(x):  # the whole test set in one batch
            for index, value in {**near, **outside}.items():
                p[index] = value
        return p.view_as(batch)

    scores = task.evaluate(nudged, tmp_path, batch_size=len(x))
    pixels = x.numel()
    assert scores["pixel_error"] == 2 / pixels  # the ball pixel off, and ½ + band at off[0] on
    assert scores[ROUNDING_INTERVALS] == {"pixel_error": [0.0, 7 / pixels]}
    assert task.evaluate(lambda b: b, tmp_path)[ROUNDING_INTERVALS] == {"pixel_error": [0.0, 0.0]}


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
        (dict(wall=-1.0), "data.wall"),
        (dict(wall=14.0), "data.radius"),  # 3 px of room for a ball of radius 3
        (dict(wall=10.0, speed=[1.0, 6.0]), "data.speed"),  # the centre's range is 6 px wide
        (dict(start_std=-1.0), "data.start_std"),
        (dict(wall=12.0, speed=[0.5, 1.0], start_std=1.0), "data.start_std"),  # a 2 px range
    ],
)
def test_bad_options_name_the_key(option, message):
    with pytest.raises(ValueError, match=message):
        build_task("bouncing_ball", **{**SMALL, **option})


def test_the_config_selects_video_defaults():
    cfg = compose_config(["data=bouncing_ball"])
    assert cfg.data.modality == "video" and cfg.data.size == 32
    assert cfg.modality_defaults.video.epochs > 0


def test_walls_inside_the_frame_bound_the_centre():
    """The authors' walls stand 2 px inside the edges: a radius-3 centre stays in [5, 27]."""
    positions = simulate(200, 40, np.random.default_rng(1), 32, 3.0, (2.0, 3.0), wall=2.0)
    assert positions.min() >= 5.0 and positions.max() <= 27.0
    assert positions.min() < 5.5 and positions.max() > 26.5  # the balls reach the walls


def test_a_normal_start_is_clipped_one_pixel_inside_the_box():
    start = simulate(2000, 1, np.random.default_rng(2), 32, 3.0, (2.0, 3.0), 0.0, 2.0, 10.0)
    start = start[:, 0].ravel()
    assert start.min() == 6.0 and start.max() == 26.0  # N(16, 10²) often leaves [6, 26]
    inside = start[(start > 6) & (start < 26)]
    # within the clip the start is N(16, 10²): about 68 % of the draws; its standard error
    # is sqrt(0.68 · 0.32 / 4000) < 0.008, so 5 standard errors is 0.04
    assert len(inside) / len(start) == pytest.approx(0.6827, abs=0.04)
    centred = simulate(3, 1, np.random.default_rng(3), 32, 3.0, (2.0, 3.0), 2.0, 0.0, 0.0)
    np.testing.assert_array_equal(centred, np.full((3, 1, 2), 16.0))


def test_the_paper_config_makes_the_papers_videos():
    cfg = compose_config(["data=bouncing_ball_paper"])
    data = dict(cfg.data)
    assert data == {
        "name": "bouncing_ball_paper", "modality": "video", "n_train": 5000, "n_val": 500,
        "n_test": 1000, "seq_len": 20, "size": 32, "radius": 3.0, "speed": [2.0, 3.0],
        "gravity": 0.0, "wall": 2.0, "start_std": 10.0, "seed": 0,
    }  # fmt: skip
    assert cfg.modality_defaults.video.epochs == 80
    task = build_task(**{**data, "n_train": 3, "n_val": 2, "n_test": 40})
    assert task.name == "bouncing_ball_paper" and task.test.frames.shape == (40, 20, 1024)
    positions = simulate(40, 20, np.random.default_rng([0, 2]), 32, 3.0, (2.0, 3.0), 0.0, 2.0, 10.0)
    np.testing.assert_array_equal(render_frames(positions).reshape(40, 20, 1024), task.test.frames)
    steps = np.linalg.norm(np.diff(positions, axis=1), axis=-1).max(axis=1)
    assert np.all((steps >= 2.0) & (steps <= 3.0))  # 10-15 px/s at dt = 0.2 s


def test_the_error_counts_wrong_pixels_of_the_missing_frames_only():
    """Two videos of 3 frames of 4 pixels. Video 0 misses frame 1 (1 pixel wrong: 0.6 against
    0; 0.5 is not above ½, so it reads as 0 and is right), video 1 misses frames 1 and 2
    (2 + 1 pixels wrong). The observed frames are all wrong and do not count."""
    x = torch.tensor(
        [
            [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]],
            [[0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1]],
        ],
        dtype=torch.float32,
    )
    p = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 0.0], [0.9, 0.7, 0.6, 0.5], [0.0, 1.0, 0.0, 1.0]],
            [[1.0, 1.0, 1.0, 1.0], [0.4, 0.9, 0.51, 0.2], [0.6, 0.5, 0.8, 0.9]],
        ]
    )
    observed = torch.tensor([[True, False, True], [True, False, False]])
    wrong, pixels = missing_pixel_error(p, x, observed)
    assert wrong.tolist() == [1.0, 3.0] and pixels.tolist() == [4, 8]
    assert (wrong.sum() / pixels.sum()).item() == pytest.approx(4 / 12)


def test_masks_keep_the_context_and_miss_what_they_say():
    generator = torch.Generator().manual_seed(0)
    observed = random_mask(4000, 20, 0.3, 4, generator)
    assert observed[:, :4].all()
    # 64,000 frames missing with probability 0.3: standard error sqrt(0.21 / 64000) < 0.002
    assert (~observed[:, 4:]).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert random_mask(2, 6, 0.0, 2, generator).all()
    assert random_mask(2, 6, 1.0, 2, generator).sum().item() == 4
    block = block_mask(2, 8, 3, 4)
    assert block.tolist() == [[True] * 4 + [False] * 3 + [True]] * 2
    with pytest.raises(ValueError, match="5 missing frames after 4 do not fit in 8 frames"):
        block_mask(1, 8, 5, 4)
