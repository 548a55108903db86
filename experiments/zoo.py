"""Maintain the pretrained zoo (:mod:`pyro_dvae.pretrained`).

``python experiments/zoo.py add NAME RUN_DIR [--url URL | --in-repository] [--description TEXT]``
adds a finished run, evaluated from its best weights (``python experiments/evaluate.py
run_dir=RUN_DIR``), as the entry ``NAME``: its weights (nothing but ``{"model": state_dict}``),
config, results row, the standard errors of its sampled bounds, data checksums and SHA-256.
Small weights ship in ``pyro_dvae/zoo/``; larger ones, or any with ``--url``, are written to
``outputs/zoo/NAME.pt`` (``--hosted-dir``) for you to upload to URL. ``--in-repository``
writes them to the repository's ``zoo/NAME.pt`` instead, to be committed: outside the package,
read from a clone. The entry reads its data as the run did (its ``data.root``,
``$PYRO_DVAE_DATA`` or the cache).

``python experiments/zoo.py list`` prints every entry: shipped or hosted, size, description.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_dvae import cli, pretrained


def add(opts: argparse.Namespace) -> None:
    """``zoo.py add``: add the entry and say where its weights are."""
    url, hosted_dir = opts.url, opts.hosted_dir
    if opts.in_repository:
        url, hosted_dir = f"zoo/{opts.name}.pt", pretrained.REPOSITORY / "zoo"
    item, path = pretrained.add(opts.name, opts.run_dir, url, opts.description, hosted_dir)
    size = f"{item.weights['bytes'] / 1024:.0f} KiB"
    if item.ships:
        print(f"{item.name}: ships in the package, {path} ({size})")
    elif item.in_repository:
        print(f"{item.name}: in the repository; commit {path} ({size})")
    else:
        print(f"{item.name}: hosted; upload {path} ({size}) to {url}")
    check = f"python experiments/evaluate.py pretrained={item.name}"
    print(f"entry: {pretrained.ZOO / item.name}.json; check it with {check}")


def show(_: argparse.Namespace) -> None:
    """``zoo.py list``: one line per entry."""
    for name in pretrained.names():
        item = pretrained.entry(name)
        if item.ships:
            where = "ships"
        elif item.in_repository:
            where = f"in the repository at {item.weights['url']}"
        else:
            where = f"hosted at {item.weights['url']}"
        print(f"{name}: {where}, {item.weights['bytes'] / 1024:.0f} KiB. {item.description}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="add an evaluated run as a pretrained model")
    adding.add_argument("name", metavar="NAME", help="e.g. dkf-jsb")
    adding.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    hosting = adding.add_mutually_exclusive_group()
    hosting.add_argument("--url", help="where the weights will be hosted (they do not ship)")
    hosting.add_argument(
        "--in-repository",
        action="store_true",
        help="write the weights to the repository's zoo/NAME.pt, to be committed (not shipped)",
    )
    adding.add_argument("--description", default="", help="one sentence on the model")
    adding.add_argument(
        "--hosted-dir",
        type=Path,
        default=Path("outputs/zoo"),
        help="where the weights of a hosted entry are written for upload (default outputs/zoo)",
    )
    adding.set_defaults(run=add)
    commands.add_parser("list", help="list the entries").set_defaults(run=show)
    opts = parser.parse_args(argv)
    try:
        opts.run(opts)
    except cli.USER_ERRORS as err:
        if cli.full_traceback():
            raise
        cli.fail(str(err))


if __name__ == "__main__":
    main(sys.argv[1:])
