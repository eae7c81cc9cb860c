"""Stock vs an earlier checkpoint vs a new one, per structure, from two ``eval-structures`` JSONs that both ran the
stock model on the same objects (checked: the stock rows must agree to 1e-9, else the runs are not comparable).

Usage: python training/recipes/structures_table.py OLD.json OLD_LABEL NEW.json NEW_LABEL > table.md
"""
from __future__ import annotations

import json
import sys

METRICS = ("noc@85", "noc@90", "miou@1", "miou@5", "miou@20", "box_iou", "max_drop")


def cell(row: dict, key: str) -> str:
    """A metric with its 95 % interval when the run has one."""
    value = row.get(key)
    if value is None:
        return "—"
    fmt = "{:.2f}" if key.startswith("noc") else "{:.3f}"
    interval = (row.get("intervals") or {}).get(key)
    text = fmt.format(value)
    return f"{text} ({fmt.format(interval[0])}–{fmt.format(interval[1])})" if interval else text


def check_same_stock(old: dict, new: dict) -> None:
    for a, b in zip(old["structures"], new["structures"], strict=True):
        if (a["dataset"], a["structure"], a["images"]) != (b["dataset"], b["structure"], b["images"]):
            raise SystemExit(f"not the same objects: {a['dataset']}/{a['structure']} vs {b['dataset']}/{b['structure']}")
        for key in METRICS:
            x, y = a["models"]["stock"][key], b["models"]["stock"][key]
            if (x is None) != (y is None) or (x is not None and abs(x - y) > 1e-6):
                raise SystemExit(f"stock differs on {a['structure']} {key}: {x} vs {y}")


def table(old: dict, old_label: str, new: dict, new_label: str) -> str:
    lines = ["| structure | objects | model | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for a, b in zip(old["structures"], new["structures"]):
        name = f"{a['structure']} ({a['dataset']})"
        for label, row in (("stock", a["models"]["stock"]), (old_label, a["models"]["checkpoint"]),
                           (f"**{new_label}**", b["models"]["checkpoint"])):
            lines.append(f"| {name} | {a['n_objects']} | {label} | " + " | ".join(cell(row, k) for k in METRICS) + " |")
    for label, row in (("stock", old["overall"]["stock"]), (old_label, old["overall"]["checkpoint"]),
                       (f"**{new_label}**", new["overall"]["checkpoint"])):
        lines.append(f"| **mean over {old['overall']['n_structures']} structures** | | {label} | "
                     + " | ".join(cell(row, k) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    old, new = (json.loads(open(path).read()) for path in (argv[0], argv[2]))
    check_same_stock(old, new)
    sys.stdout.write(table(old, argv[1], new, argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
