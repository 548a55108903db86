import pytest
import torch

from pyro_dvae.feedback import Feedback, FreeRunning, check_schedule, sampling_probability
from pyro_dvae.likelihoods import ExponentialPower


def test_schedule_rises_in_steps_to_one():
    """The spec's 0.1, 0.2, ..., 1.0, one step every ``every`` epochs, then 1 for good."""
    epochs = [0, 9, 10, 19, 20, 45, 89, 90, 91, 500]
    assert [sampling_probability(e, 0.1, 0.1, 10) for e in epochs] == [
        0.1,
        0.1,
        0.2,
        0.2,
        0.3,
        0.5,
        0.9,
        1.0,
        1.0,
        1.0,
    ]
    assert [sampling_probability(e, 0.25, 0.25, 3) for e in range(0, 13, 3)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    assert sampling_probability(7, 0.0, 0.5, 1) == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.5, 0.1, 10), r"train\.ss_start=1\.5"),
        ((0.1, 0.0, 10), r"train\.ss_step=0\.0"),
        ((0.1, 0.1, 0), r"train\.ss_every=0"),
        ((0.1, 0.1, 2.5), r"train\.ss_every=2\.5"),
    ],
)
def test_bad_schedule_names_the_key(args, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(*args)


def test_coins_have_fixed_values_for_a_fixed_seed():
    """One independent coin per sequence and frame (True: the prediction is read), drawn from
    torch's global generator; context frames are never replaced."""
    torch.manual_seed(0)
    coins = Feedback(0.3).coins(torch.zeros(3, 5, 1))
    expected = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(coins, expected)
    torch.manual_seed(0)
    with_context = Feedback(0.3, context=3).coins(torch.zeros(3, 5, 1))
    assert torch.equal(with_context, expected & (torch.arange(5) >= 3))


def test_coins_are_per_sequence_with_the_right_rate():
    torch.manual_seed(1)
    coins = Feedback(0.3).coins(torch.zeros(4000, 20, 1))
    assert coins.float().mean().item() == pytest.approx(0.3, abs=0.01)
    per_step = coins.float().mean(0)  # one coin for the whole batch would make these 0 or 1
    assert ((per_step > 0.2) & (per_step < 0.4)).all()


def test_teacher_forcing_and_generation_draw_nothing():
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert not Feedback(0.0).coins(torch.zeros(2, 4, 1)).any()
    assert Feedback(1.0).coins(torch.zeros(2, 4, 1)).all()
    assert torch.equal(torch.get_rng_state(), state)
    assert Feedback(0.0).teacher_forcing and not Feedback(0.01).teacher_forcing


@pytest.mark.parametrize(("p", "context"), [(-0.1, 0), (1.1, 0), (0.5, -1)])
def test_bad_feedback_is_a_clear_error(p, context):
    with pytest.raises(ValueError, match="feedback"):
        Feedback(p, context)


def test_read_takes_the_detached_prediction_where_the_coin_says():
    y = torch.tensor([[0.0, 1.0], [2.0, 3.0]], requires_grad=True)
    x = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    read = Feedback(0.5).read(ExponentialPower(), y, x, torch.tensor([True, False]))
    torch.testing.assert_close(read, torch.tensor([[1.0, torch.e], [7.0, 8.0]]))
    assert not read.requires_grad


def test_free_running_walks_once_per_trajectory():
    """h_t = h_{t−1} + x^in_{t−1} + z_{t−1}, emit(h, z) = log(h + 10): reads exp(emit) = h + 10
    where the coin says so."""
    calls = []

    def advance(state, x_in, z_prev):
        calls.append(1)
        h = x_in + z_prev if state is None else state[0] + x_in + z_prev
        return h, h

    x = torch.arange(1.0, 5.0).reshape(1, 4, 1)
    coins = torch.tensor([[False, True, False, False]])
    run = FreeRunning(
        advance, lambda h, z: torch.log(h + 10), x, coins, Feedback(0.5), ExponentialPower()
    )
    z = torch.full((1, 4, 1), 0.5)
    h = run.along(z)
    # h1 = 0, h2 = h1 + x1 + z = 1.5, h3 = h2 + (h2 + 10) + z = 13.5, h4 = h3 + x3 + z = 17
    torch.testing.assert_close(h[0, :, 0], torch.tensor([0.0, 1.5, 13.5, 17.0]))
    assert run.along(z) is h and len(calls) == 4
