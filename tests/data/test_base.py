"""The dataset interface: a :class:`Task` must define ``evaluate`` and ``render``; tasks are found
by name after the built-in dataset modules and the ``data.module`` one are imported, built with
their options, and an unknown name says the key, the choices and how to add one."""

import sys
import types

import pytest

from pyro_dvae.data import base, motion, speech
from pyro_dvae.data.base import TASKS, Task, build_task, find_task, register_task


class Tiny(Task):
    """The least a task defines: the two methods, and whatever its builder's options say."""

    def __init__(self, **options) -> None:
        self.options = options

    def evaluate(self, estimate, out_dir, n_examples=4):
        return {}

    def render(self, x, out_dir):
        return []


@pytest.mark.parametrize("missing", ["evaluate", "render"])
def test_a_task_without_evaluate_or_render_cannot_be_made(missing):
    partial = type("Partial", (Tiny,), {missing: Task.__dict__[missing]})
    with pytest.raises(TypeError, match=f"abstract method '?{missing}'?$"):
        partial()


def test_build_task_calls_the_registered_builder_with_the_options(monkeypatch):
    monkeypatch.delitem(TASKS, "test_tiny", raising=False)  # forgotten after the test
    assert register_task("test_tiny")(Tiny) is Tiny
    task = build_task("test_tiny", seq_len=5, seed=1)
    assert type(task) is Tiny and task.options == {"seq_len": 5, "seed": 1}


def test_find_task_imports_the_builtin_modules_then_the_given_one(monkeypatch):
    """The imports are recorded, not run: the modules were imported above, and registered."""
    imported = []
    importer = types.SimpleNamespace(import_module=imported.append)
    monkeypatch.setattr(base, "importlib", importer)
    assert find_task("fsdd", module="pyro_dvae.data.bouncing_ball") is speech.build_fsdd
    assert imported == [
        "pyro_dvae.data.speech",
        "pyro_dvae.data.motion",
        "pyro_dvae.data.bouncing_ball",
    ]
    assert find_task("h36m") is motion.build_h36m


def test_a_task_from_a_module_outside_the_package(tmp_path, monkeypatch):
    """``data.module`` names a module that registers its task when imported."""
    name = "tiny_task_plugin"
    (tmp_path / f"{name}.py").write_text(
        "from pyro_dvae.data import register_task\n\n\n"
        "@register_task('test_outside')\n"
        "def build(**options):\n"
        "    return options\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)  # both forgotten after the test
    monkeypatch.delitem(TASKS, "test_outside", raising=False)
    with pytest.raises(ValueError, match=r"^data\.name='test_outside' is not a dataset"):
        build_task("test_outside")
    assert build_task("test_outside", module=name, seq_len=5) == {"seq_len": 5}


def test_an_unknown_name_says_the_key_the_choices_and_how_to_add_one():
    message = (
        r"^data\.name='nope' is not a dataset; expected one of \[.*'bouncing_ball', .*"
        r"'cmu_mocap', 'fsdd', 'h36m', .*'wav_folder'\]\. To add one, decorate it with "
        r"@register_task\('nope'\) \(from pyro_dvae\.data import register_task\) in your "
        r"module and load that with plugins=\[your_module\]$"
    )
    with pytest.raises(ValueError, match=message):
        find_task("nope")
