"""Datasets as :class:`~pyro_dvae.data.base.Task` objects, built with ``build_task``."""

from pyro_dvae.data import bouncing_ball  # noqa: F401  (registers data=bouncing_ball)
from pyro_dvae.data.base import Task, build_task, register_task

__all__ = ["Task", "build_task", "register_task"]
