"""The DVAE family. ``build_model`` is how the runner gets a model from ``model=<name>``."""

from __future__ import annotations

from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.models.dkf import DKF
from pyro_dvae.models.dsae import DSAE
from pyro_dvae.models.kvae import KVAE
from pyro_dvae.models.rvae import RVAE, NonCausalRVAE
from pyro_dvae.models.srnn import SRNN
from pyro_dvae.models.storn import STORN
from pyro_dvae.models.vae import VAE
from pyro_dvae.models.vrnn import VRNN
from pyro_dvae.nn import initialise

MODELS: dict[str, type[DVAE]] = {
    "vae": VAE,
    "dkf": DKF,
    "storn": STORN,
    "vrnn": VRNN,
    "srnn": SRNN,
    "rvae_causal": RVAE,
    "rvae_noncausal": NonCausalRVAE,
    "dsae": DSAE,
    "kvae": KVAE,
}


def build_model(
    name: str,
    x_dim: int,
    likelihood: Likelihood,
    guide: str | None = None,
    prior: str | None = None,
    init: str = "torch",
    sites: str = "trajectory",
    **params,
) -> DVAE:
    """Model ``name`` with layer sizes ``params``; ``guide``/``prior`` None picks its default;
    ``init`` is the MLP weight initialisation (:func:`~pyro_dvae.nn.initialise`); ``sites`` the
    form of its latent sample sites (:meth:`~pyro_dvae.models.base.DVAE.use_sites`).

    Models with a single guide or prior reject other names with a clear error.
    """
    if name not in MODELS:
        raise ValueError(
            f"model.name={name!r} is not a known model; expected one of {sorted(MODELS)}"
        )
    cls = MODELS[name]
    options = dict(params)
    for key, value in (("guide", guide), ("prior", prior)):
        if value is not None:
            if key not in cls.__init__.__code__.co_varnames:
                raise ValueError(f"{key}.name={value!r}: model {name!r} has a single {key}")
            options[key] = value
    model = cls(x_dim=x_dim, likelihood=likelihood, **options)
    initialise(model, init)
    return model.use_sites(sites)


__all__ = ["DVAE", "MODELS", "build_model"]
