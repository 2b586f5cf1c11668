"""``diffusion-lab-report SWEEP_DIR``: print and write the report of a ``-m`` sweep (see ``reports.sweep_report``).

Imports neither torch nor Lightning: the report reads JSON, CSV and YAML files only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffusion_lab.reports import sweep_report
from diffusion_lab.utils.files import OutputError, check_writable


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: print the table, write the files; a bad folder ends it with one line."""
    parser = argparse.ArgumentParser(prog="diffusion-lab-report", description=sweep_report.__doc__.split("\n")[0])
    parser.add_argument(
        "sweep_dir",
        help="folder of a diffusion-lab-train -m sweep (outputs/multirun/<date_time>) or of a "
        "diffusion-lab-evaluate -m sweep (outputs/evaluate-multirun/<date_time>)",
    )
    parser.add_argument("--output", help="folder for the report files (default: the sweep folder)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.strip():
            raise ValueError("SWEEP_DIR is empty: pass the folder of a -m sweep, e.g. outputs/multirun/<date_time>")
        if args.output is not None:
            if not args.output.strip():
                raise ValueError("--output is empty: pass a folder for the report files, or leave it out")
            check_writable(args.output, "--output")
        jobs, out = sweep_report.write_report(args.sweep_dir, args.output)
    except (sweep_report.ReportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OutputError as err:  # e.g. a sweep folder one may read but not write
        print(f"error: {err}: pass --output a folder you can write to", file=sys.stderr)
        raise SystemExit(1) from None
    header, rows = sweep_report.table_rows(jobs)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in sweep_report.failures(jobs):
        print(f"failed: {line}")
    print(f"Wrote {out / 'report.md'}, report.csv and the figures")


if __name__ == "__main__":
    main()
