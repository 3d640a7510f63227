"""The lab's report (report.md, report.html) from runs, sweeps or folders above them.

python -m mlp_lab.report outputs/lab/*/ [more run or sweep dirs] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlp_lab.report.write import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlp_lab.report",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run, sweep or parent directories")
    parser.add_argument(
        "--out", type=Path, help="where report.md goes (default: the first directory)"
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(args.dirs, args.out or args.dirs[0])
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(report)


if __name__ == "__main__":
    main()
