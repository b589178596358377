"""Merge a device run's rows into a results file: a new row replaces the row it measures again
(same key fields), other rows are kept, in the file's order with new keys appended.

    python -m bench.merge_rows bench/results/engine_h200.json NEW.json [NEW2.json ...] \
        --key model seq_len impl variant
"""

import argparse
import json
from pathlib import Path


def merge(old: list[dict], new: list[dict], key: list[str]) -> list[dict]:
    def k(row: dict) -> tuple:
        return tuple(row.get(field) for field in key)

    replaced = {k(row): row for row in new}
    merged = [replaced.pop(k(row), row) for row in old]
    return merged + [row for row in new if k(row) in replaced]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="results file (a JSON list of rows)")
    parser.add_argument("new", type=Path, nargs="+", help="files of new rows, in order")
    parser.add_argument("--key", nargs="+", default=["model", "seq_len", "impl", "variant"])
    args = parser.parse_args(argv)
    rows = json.loads(args.target.read_text()) if args.target.is_file() else []
    for path in args.new:
        rows = merge(rows, json.loads(path.read_text()), args.key)
    args.target.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{args.target}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
