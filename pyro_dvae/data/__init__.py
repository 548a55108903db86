"""Datasets as :class:`~pyro_dvae.data.base.Task` objects, built with ``build_task``."""

from pyro_dvae.data import bouncing_ball  # noqa: F401  (registers data=bouncing_ball)
from pyro_dvae.data.base import TASKS, Task, build_task, find_task, register_task

__all__ = ["TASKS", "Task", "build_task", "find_task", "register_task"]
