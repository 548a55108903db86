"""results.md and the console line of experiments/evaluate.py: every metric with the number of
test items its mean covers, and the speech floor in a second row."""

import runpy
import sys
from pathlib import Path

from pyro_dvae import runner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {  # the shape of a speech results.json, cut down
    "si_sdr": 4.25,
    "estoi": 0.3125,
    "pesq_wb": None,
    "n_utterances": 300,
    "median": {"si_sdr": {"median": 4.0, "ci": 0.5}},
    "counts": {
        "si_sdr": {"scored": 300, "items": 300},
        "estoi": {"scored": 129, "items": 300},
        "pesq_wb": {"scored": 0, "items": 300},
    },
    "floor": {
        "estimate": "mean spectrum",
        "si_sdr": -3.5,
        "estoi": 0.25,
        "pesq_wb": None,
        "counts": {
            "si_sdr": {"scored": 300, "items": 300},
            "estoi": {"scored": 128, "items": 300},
            "pesq_wb": {"scored": 0, "items": 300},
        },
    },
    "model": "dkf",
    "checkpoint": "best",
    "epochs": 2,
}


def test_markdown_row_shows_counts_and_the_floor():
    assert runner.markdown_row(RESULTS).splitlines() == [
        "| si_sdr | estoi | pesq_wb | n_utterances | model | epochs |",
        "| --- | --- | --- | --- | --- | --- |",
        "| 4.250 (300/300) | 0.312 (129/300) | – (0/300) | 300 | dkf | 2 |",
        "| -3.500 (300/300) | 0.250 (128/300) | – (0/300) |  | floor: mean spectrum |  |",
    ]


def test_markdown_row_without_counts_or_floor_is_one_plain_row():
    results = {"nll_per_step": 7.5, "model": "dkf", "checkpoint": "best"}
    assert runner.markdown_row(results) == (
        "| nll_per_step | model |\n| --- | --- |\n| 7.500 | dkf |\n"
    )


def test_the_console_line_of_evaluate_is_results_md(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "evaluate", lambda *args: RESULTS)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", f"run_dir={tmp_path}", "device=cpu"])
    runpy.run_path(str(ROOT / "experiments" / "evaluate.py"), run_name="__main__")
    assert capsys.readouterr().out == runner.markdown_row(RESULTS)


def generated_blocks(text: str) -> dict[str, str]:
    """Each ``<!-- NAME:start -->`` … ``<!-- NAME:end -->`` block of ``text``, by NAME."""
    blocks = {}
    for piece in text.split("<!-- ")[1:]:
        marker, _, rest = piece.partition(" -->")
        name, _, kind = marker.partition(":")
        if kind == "start":
            blocks[name] = rest.split(f"<!-- {name}:end -->")[0]
    return blocks


def test_each_generated_block_of_results_md_holds_only_its_own_section():
    """motion_table.py and music_table.py rewrite everything between their markers, so a
    section written by hand inside a block is lost at the next regeneration."""
    blocks = generated_blocks((ROOT / "docs" / "results.md").read_text())
    assert set(blocks) == {"motion_table", "music_table"}
    for name, heading in (("motion_table", "## Motion:"), ("music_table", "## Music:")):
        sections = [line for line in blocks[name].splitlines() if line.startswith("## ")]
        assert len(sections) == 1 and sections[0].startswith(heading), (name, sections)
        assert blocks[name].lstrip().startswith(heading), name
