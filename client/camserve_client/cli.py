"""The `camserve` command. `serve` needs the server extra; every other command is client-only."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        try:
            from camserve.cli import main as serve_main
        except ImportError as exc:  # the light install has no TensorFlow
            print(f"camserve serve needs the server extra: pip install 'camserve[server]' ({exc})",
                  file=sys.stderr)
            return 2
        return serve_main(argv[1:])
    print("usage: camserve serve [...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
