"""pyro_dvae.registry: qualified names, registering (an entry registered again replaces itself,
another entry under a held name is refused, naming both), lookup, and the message for an
unknown name: the key, the known names sorted and how to add one."""

import functools
import re

import pytest

from pyro_dvae.registry import Registry, qualified_name


def priors() -> Registry[type]:
    """An empty registry made as :mod:`pyro_dvae.models.priors` makes its own."""
    return Registry("prior.name", "Markov prior", "pyro_dvae.models.priors.register_transition")


class Linear:
    """An entry."""


class Gated:
    """Another entry."""


def build(scale: float) -> float:
    """An entry that is a function."""
    return scale


def entry_class() -> type:
    """A new class at every call, always of the same qualified name: what importing a module
    again makes of the classes it defines."""

    class Entry:
        pass

    return Entry


def test_qualified_name_is_the_module_and_the_qualname():
    assert qualified_name(Linear) == f"{__name__}.Linear"
    assert qualified_name(build) == f"{__name__}.build"
    assert qualified_name(entry_class()) == f"{__name__}.entry_class.<locals>.Entry"
    assert qualified_name(functools.partial(build, 2.0)) == f"{__name__}.build"


def test_register_returns_the_entry_and_lookup_finds_it():
    registry = priors()
    assert registry.register("linear")(Linear) is Linear
    assert registry.register("build")(build) is build
    assert dict(registry) == {"linear": Linear, "build": build}
    assert registry.lookup("linear") is Linear and registry.lookup("build") is build


def test_an_entry_registered_again_replaces_itself():
    registry = priors()
    first, again = entry_class(), entry_class()
    registry.register("walk")(first)
    registry.register("walk")(again)
    assert registry.lookup("walk") is again


def test_a_name_held_by_another_class_is_refused():
    registry = priors()
    registry.register("gated")(Gated)
    message = (
        f"prior.name='gated' is already {__name__}.Gated; register "
        f"{__name__}.entry_class.<locals>.Entry under another name"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        registry.register("gated")(entry_class())
    assert dict(registry) == {"gated": Gated}


def test_an_unknown_name_is_refused_with_the_choices_and_how_to_add_one():
    registry = priors()
    registry.register("linear")(Linear)
    registry.register("gated")(Gated)
    message = (
        "prior.name='laplace' is not a Markov prior; expected one of ['gated', 'linear']. "
        "To add one, decorate it with @register_transition('laplace') (from "
        "pyro_dvae.models.priors import register_transition) in your module and load that "
        "with plugins=[your_module]"
    )
    assert registry.unknown("laplace") == message
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        registry.lookup("laplace")
