"""`python -m ctpg ...` is the `ctpg` command line (agents/cli.py).

The core package never imports agents at import time (dependencies point
agents -> envs -> ctpg); the command line is imported here, only when run.
"""
import sys


def main() -> int:
    try:
        from agents.cli import main as cli_main
    except ModuleNotFoundError as err:
        print(f"ctpg: the command line needs the agents extra ({err.name} is missing): "
              "pip install -e '.[agents]'", file=sys.stderr)
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
