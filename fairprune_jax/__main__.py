"""``python -m fairprune_jax <sweep|bias|report|launch> [flags]``: the console scripts, without their wrappers
(what `fairprune_jax.launch` starts, so a multi-process run works from an installed wheel)."""
from __future__ import annotations

import sys

from fairprune_jax import cli

COMMANDS = {"sweep": cli.sweep, "bias": cli.bias, "report": cli.report, "launch": cli.launch}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m fairprune_jax <{'|'.join(COMMANDS)}> [flags] (--help for each)", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    COMMANDS[command]()


if __name__ == "__main__":
    main()
