"""`genwm` command line. Each command lives in its own module and registers itself here."""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from genwm import __version__
    from genwm.commands import demo, files, personalize, train

    parser = argparse.ArgumentParser(prog="genwm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genwm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    files.register(sub)
    train.register(sub)
    personalize.register(sub)
    demo.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"genwm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
