"""Tabulate the runs of a sweep: ``python experiments/collect.py SWEEP_DIR``.

Every run below SWEEP_DIR (e.g. a Hydra multirun's ``hydra.sweep.dir``) is read; runs whose
configs differ only in ``seed`` form one row, with mean ± sample std (ddof=1) of each metric
and the test items it covers, e.g. ``0.30 ± 0.01 (129/300)``, and for speech the floor of a
trivial reconstruction beside each metric (see :mod:`pyro_dvae.collect`);
``--results results_generation.json`` tabulates the ``mode=generation`` evaluations instead.
Writes ``SWEEP_DIR/collected.md`` and ``SWEEP_DIR/collected.csv`` (or ``--out PREFIX``.md /
.csv), prints the markdown table, and lists skipped folders and repeated seeds on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_dvae import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    parser.add_argument(
        "--out", type=Path, help="write PREFIX.md and PREFIX.csv (default SWEEP_DIR/collected)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="config key that does not split rows, like seed (repeatable), e.g. data.root",
    )
    parser.add_argument(
        "--results",
        default="results.json",
        metavar="FILE",
        help="each run's file of test metrics: results.json (default) or results_generation.json",
    )
    opts = parser.parse_args()
    try:
        rows, messages = collect.collect(opts.sweep_dir, opts.ignore, opts.results)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"collect.py: {err}")
    for message in messages:
        print(message, file=sys.stderr)
    prefix = opts.out or opts.sweep_dir / "collected"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    text = collect.markdown(rows)
    (prefix.parent / f"{prefix.name}.md").write_text(text)
    (prefix.parent / f"{prefix.name}.csv").write_text(collect.csv_text(rows))
    print(text)


if __name__ == "__main__":
    main()
