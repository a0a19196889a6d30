"""``lrag eval``: the comparison table and one line per skipped metric, as text."""
from __future__ import annotations


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_table(rows: list[dict]) -> str:
    """Rows ``{run, mode, metric: value, ...}`` as an aligned text table, one column per metric."""
    if not rows:
        return ""
    columns = ["run", "mode"] + list(dict.fromkeys(k for r in rows for k in r
                                                   if k not in ("run", "mode")))
    cells = [columns] + [[str(r.get(c, "")) if c in ("run", "mode") else _num(r.get(c))
                          for c in columns] for r in rows]
    if len(columns) > 8:  # a wide table reads better transposed: metrics as rows
        cells = [list(col) for col in zip(*cells)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


def format_report(report: dict) -> str:
    """The console text of ``evaluate_runs``' report: the table, the skipped metrics, files."""
    lines = [format_table(report["comparison"])]
    for run in report["runs"]:
        for metric, reason in run["skipped"].items():
            lines.append(f"skipped {metric} ({run['run']}): {reason}")
    for run in report["runs"]:
        lines.append(f"eval: {run['run_dir']}/eval/eval.json")
    return "\n".join(line for line in lines if line)
