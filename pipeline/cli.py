"""The ``gotel`` command line: inspect, trace, run, validate, demo.

Every error a user can cause is a ``receiver.errors.GotelError``: printed as one line, exit status 2.
"""

import argparse
import sys

from receiver.errors import GotelError


def build_parser():
    parser = argparse.ArgumentParser(prog="gotel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="report a Go binary's version, layout and probe points")
    p.add_argument("target", help="path of a Go binary, or a PID")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_inspect)
    return parser


def _inspect(args):
    from receiver import inspect

    return inspect.command(args.target, as_json=args.json)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except GotelError as e:
        print(f"gotel: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
