"""Components by name, as a config key selects them, and the error that says how to add one.

Every extension point of pyro-dvae is a :class:`Registry` filled by a decorator: models
(``register_model``), DKF guides (``register_guide``), Markov priors (``register_transition``),
likelihoods (``register_likelihood``) and datasets (``register_task``). User code calls the
same decorators in its own module and names that module in ``plugins=[...]``
(:mod:`pyro_dvae.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def qualified_name(entry: object) -> str:
    """``module.QualName`` of a class or function (of the wrapped function for a partial)."""
    target = getattr(entry, "func", entry)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class Registry(dict[str, T], Generic[T]):
    """Name → component for one config key; a ``dict`` that only :meth:`register` should fill.

    Args:
        key: the config key that picks an entry, e.g. ``prior.name``.
        kind: what an entry is, for messages, e.g. ``Markov prior``.
        decorator: the decorator that adds an entry, as user code imports it, e.g.
            ``pyro_dvae.models.priors.register_transition``.
    """

    def __init__(self, key: str, kind: str, decorator: str) -> None:
        super().__init__()
        self.key, self.kind, self.decorator = key, kind, decorator

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``entry`` available as ``<key>=<name>``. A name held by another
        entry is an error (a module imported again re-registers its own entries freely)."""

        def wrap(entry: T) -> T:
            held = self.get(name)
            if held is not None and qualified_name(held) != qualified_name(entry):
                raise ValueError(
                    f"{self.key}={name!r} is already {qualified_name(held)}; register "
                    f"{qualified_name(entry)} under another name"
                )
            self[name] = entry
            return entry

        return wrap

    def lookup(self, name: str) -> T:
        """The entry ``name``; a ``ValueError`` naming the key, the choices and how to add one."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return self[name]

    def unknown(self, name: str) -> str:
        """One line: ``name`` is not known, the known names, and how to register one."""
        return (
            f"{self.key}={name!r} is not a {self.kind}; expected one of {sorted(self)}. "
            f"{self.how_to_add(name)}"
        )

    def how_to_add(self, name: str) -> str:
        module, function = self.decorator.rsplit(".", 1)
        return (
            f"To add one, decorate it with @{function}({name!r}) (from {module} import "
            f"{function}) in your module and load that with plugins=[your_module]"
        )
