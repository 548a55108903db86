"""The DVAE family. ``build_model`` is how the runner gets a model from ``model=<name>``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models import rvae, srnn, vrnn
from pyro_dvae.models.base import DVAE
from pyro_dvae.models.dkf import DKF, GUIDES
from pyro_dvae.models.dsae import DSAE
from pyro_dvae.models.kvae import KVAE
from pyro_dvae.models.priors import TRANSITIONS
from pyro_dvae.models.rvae import RVAE, NonCausalRVAE
from pyro_dvae.models.srnn import SRNN
from pyro_dvae.models.storn import STORN
from pyro_dvae.models.vae import VAE
from pyro_dvae.models.vrnn import VRNN
from pyro_dvae.nn import initialise
from pyro_dvae.registry import Registry

MODELS: Registry[type[DVAE]] = Registry("model.name", "model", "pyro_dvae.models.register_model")

CHOICES: dict[str, dict[str, Mapping[str, object]]] = {}
"""Model name → ``{"guide": table, "prior": table}``, the names its ``guide=`` and ``prior=`` may
take; a key that is absent: the model has a single guide (prior), its own."""


def register_model(
    name: str,
    guides: Mapping[str, object] | None = None,
    priors: Mapping[str, object] | None = None,
) -> Callable[[type[DVAE]], type[DVAE]]:
    """Class decorator: make a :class:`DVAE` available as ``model=<name>`` (in a module outside
    this package too, loaded with ``plugins=[module]``).

    ``guides`` / ``priors``: the tables whose names ``guide=`` / ``prior=`` may take (e.g. DKF's
    :data:`~pyro_dvae.models.dkf.GUIDES` and :data:`~pyro_dvae.models.priors.TRANSITIONS`); the
    chosen name reaches the class as its ``guide`` / ``prior`` argument. None: the model has a
    single one and takes no such argument.
    """

    def wrap(cls: type[DVAE]) -> type[DVAE]:
        MODELS.register(name)(cls)
        tables = (("guide", guides), ("prior", priors))
        CHOICES[name] = {key: table for key, table in tables if table is not None}
        return cls

    return wrap


register_model("vae")(VAE)
register_model("dkf", guides=GUIDES, priors=TRANSITIONS)(DKF)
register_model("storn")(STORN)
register_model("vrnn", guides=vrnn.GUIDES)(VRNN)
register_model("srnn", guides=srnn.GUIDES)(SRNN)
register_model("rvae_causal", guides=rvae.GUIDES)(RVAE)
register_model("rvae_noncausal", guides=rvae.GUIDES)(NonCausalRVAE)
register_model("dsae")(DSAE)
register_model("kvae")(KVAE)


def check_choices(name: str, guide: str | None = None, prior: str | None = None) -> None:
    """Refuse a model name that is not registered, or a guide / prior name that ``model=<name>``
    does not have (None: the model's own), before anything is built.

    Raises:
        ValueError: one line naming the key and the valid choices (and how to register one
            where users can add to the table).
    """
    MODELS.lookup(name)
    for key, value in (("guide", guide), ("prior", prior)):
        table = CHOICES[name].get(key)
        if value is None or (table is not None and value in table):
            continue
        if table is None:
            raise ValueError(
                f"{key}.name={value!r}: model={name} has a single {key}, its own; "
                f"expected {key}=default"
            )
        if isinstance(table, Registry):
            raise ValueError(table.unknown(value))
        raise ValueError(
            f"{key}.name={value!r} is not a {key} of model={name}; expected one of {list(table)}"
        )


def build_model(
    name: str,
    x_dim: int,
    likelihood: Likelihood,
    guide: str | None = None,
    prior: str | None = None,
    prior_options: dict | None = None,
    init: str = "torch",
    sites: str = "trajectory",
    **params,
) -> DVAE:
    """Model ``name`` with layer sizes ``params``; ``guide``/``prior`` None picks its default,
    ``prior_options`` are the options of its prior (the prior config's ``options``);
    ``init`` is the MLP weight initialisation (:func:`~pyro_dvae.nn.initialise`); ``sites`` the
    form of its latent sample sites (:meth:`~pyro_dvae.models.base.DVAE.use_sites`).

    A name the model does not have is refused by :func:`check_choices`.
    """
    check_choices(name, guide, prior)
    cls = MODELS[name]
    options = dict(params)
    for key, value in (("guide", guide), ("prior", prior)):
        if value is not None:
            options[key] = value
    if prior_options:
        if "prior_options" not in cls.__init__.__code__.co_varnames:
            raise ValueError(
                f"prior.options={prior_options!r}: model {name!r} has no prior options"
            )
        options["prior_options"] = prior_options
    model = cls(x_dim=x_dim, likelihood=likelihood, **options)
    initialise(model, init)
    return model.use_sites(sites)


__all__ = ["CHOICES", "DVAE", "MODELS", "build_model", "check_choices", "register_model"]
