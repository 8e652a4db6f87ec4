"""``mixjax search``: the command's parser and dispatch over the routes of pipeline.py
(regmix, law, skillit-graph) and cpt_search.py (dcpt, sft)."""

from __future__ import annotations

import argparse

from mixjax.search import cpt_search, pipeline


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    cpt_search.add_parsers(pipeline.add_arguments(parser, name))


def run(args: argparse.Namespace) -> int:
    if args.method in ("dcpt", "sft"):
        return cpt_search.run(args)
    return pipeline.run(args)
