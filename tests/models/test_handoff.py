"""Handoff: the value the guide ``put`` is the very object the model's ``take`` returns, only for
the same key tensor, with the key, the module's parameters and the grad mode unchanged since;
otherwise, and on a second take, the model recomputes it."""

import weakref

import torch
from torch import nn

from pyro_dvae.models.handoff import Handoff


def recompute():
    """A ``compute`` whose result is a fresh tensor, told apart from the value put by identity."""
    return torch.zeros(1)


def test_take_returns_the_very_value_put_for_the_same_key():
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    value = module(key)
    handoff.put(key, module, value)
    assert handoff.take(key, module, recompute) is value


def test_take_empties_the_slot():
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    value = module(key)
    handoff.put(key, module, value)
    handoff.take(key, module, recompute)
    assert handoff.take(key, module, recompute) is not value


def test_nothing_put_is_computed():
    computed = recompute()
    assert Handoff().take(torch.rand(2, 3), nn.Linear(3, 1), lambda: computed) is computed


def test_an_equal_but_other_key_tensor_is_computed():
    """A guide run alone leaves its value for its own x; the model's x is another tensor."""
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    handoff.put(key, module, module(key))
    computed = recompute()
    assert handoff.take(key.clone(), module, lambda: computed) is computed


def test_a_key_changed_in_place_is_computed():
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    handoff.put(key, module, module(key))
    key.mul_(2)
    computed = recompute()
    assert handoff.take(key, module, lambda: computed) is computed


def test_an_optimiser_step_in_between_is_computed():
    """One parameter updated in place, as an optimiser's step does (``p -= lr · grad``)."""
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    value = module(key)
    handoff.put(key, module, value)
    value.sum().backward()
    with torch.no_grad():
        module.bias.sub_(0.1 * module.bias.grad)
    computed = recompute()
    assert handoff.take(key, module, lambda: computed) is computed


def test_a_value_put_under_no_grad_is_not_taken_with_grad():
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    with torch.no_grad():
        handoff.put(key, module, module(key))
    computed = module(key)
    assert handoff.take(key, module, lambda: computed) is computed
    assert computed.requires_grad


def test_the_slot_does_not_keep_the_key_alive():
    """Only a weak reference to the key: a batch dropped by the caller is freed (the value put
    here holds no graph through the key)."""
    handoff, key, module = Handoff(), torch.rand(2, 3), nn.Linear(3, 1)
    handoff.put(key, module, recompute())
    alive = weakref.ref(key)
    del key
    assert alive() is None
