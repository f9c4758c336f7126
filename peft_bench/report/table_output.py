"""Writing a table out: Markdown, CSV, LaTeX (booktabs), HTML and JSON, with its footer.

A ``TableReport`` holds the cells as text (exactly what is printed), the numbers behind the columns
where a best value means something (for the bold in LaTeX), and the footer: notes (sources,
provenance) and warnings. CSV carries the cells only, so that it stays machine-readable; every other
format carries the footer too.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Literal, get_args

import pandas as pd

from peft_bench.errors import UserError

TableFormat = Literal["markdown", "csv", "latex", "html", "json"]
FORMATS: tuple[str, ...] = get_args(TableFormat)

# LaTeX specials; order matters only for the backslash, which must not re-escape the others' output.
LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "−": r"$-$",
}


@dataclass
class TableReport:
    """A table ready to render: text cells, the numbers that decide "best", and a footer."""

    cells: pd.DataFrame  # text cells; the index (named) is the first column
    title: str = ""
    best: dict[str, pd.Series] = field(default_factory=dict)  # column -> numbers; the highest is bold
    group_column: str | None = None  # LaTeX puts a rule between runs of rows with different groups
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def best_rows(self, column: str) -> set:
        """Row labels holding the highest number of ``column`` (all of them on a tie; none if empty)."""
        values = pd.to_numeric(self.best.get(column, pd.Series(dtype=float)), errors="coerce").dropna()
        if values.empty:
            return set()
        return set(values.index[values == values.max()])


def render_report(report: TableReport, fmt: str = "markdown") -> str:
    renderers = {
        "markdown": to_markdown,
        "csv": lambda r: r.cells.to_csv(),
        "latex": to_latex,
        "html": to_html,
        "json": to_json,
    }
    if fmt not in renderers:
        raise UserError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return renderers[fmt](report)


def to_markdown(report: TableReport) -> str:
    # disable_numparse: tabulate would otherwise reformat "82.0" as "82" and "7.20" as "7.2".
    parts = [report.cells.to_markdown(disable_numparse=True)]
    footer = [f"- **warning**: {text}" for text in report.warnings] + [f"- {text}" for text in report.notes]
    if footer:
        parts.append("\n".join(footer))
    return "\n\n".join(parts) + "\n"


def to_html(report: TableReport) -> str:
    parts = []
    if report.title:
        parts.append(f"<h3>{html.escape(report.title)}</h3>")
    parts.append(report.cells.to_html(escape=True, na_rep=""))
    items = [f'<li class="warning"><strong>warning</strong>: {html.escape(text)}</li>' for text in report.warnings]
    items += [f"<li>{html.escape(text)}</li>" for text in report.notes]
    if items:
        parts.append("<ul>\n" + "\n".join(items) + "\n</ul>")
    return "\n".join(parts) + "\n"


def _index_name(cells: pd.DataFrame, default: str) -> str:
    name = cells.index.name
    return name if isinstance(name, str) and name else default


def to_json(report: TableReport) -> str:
    index_name = _index_name(report.cells, "row")
    rows = [{index_name: str(label), **row.to_dict()} for label, row in report.cells.iterrows()]
    document = {
        "title": report.title,
        "columns": [index_name, *map(str, report.cells.columns)],
        "rows": rows,
        "notes": report.notes,
        "warnings": report.warnings,
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def to_latex(report: TableReport) -> str:
    """A booktabs ``table`` environment; the best of each measured column in bold; footer as comments.

    The footer stays in ``%`` comments: the provenance belongs with the source of the paper, and the
    caption is the author's to write.
    """
    cells = report.cells
    header = [latex_escape(_index_name(cells, ""))] + [latex_escape(str(c)) for c in cells.columns]
    lines = [
        "% peft-bench table; needs \\usepackage{booktabs}",
        *(f"% WARNING: {latex_comment(text)}" for text in report.warnings),
        *(f"% {latex_comment(text)}" for text in report.notes),
        "\\begin{table}[t]",
        "\\centering",
    ]
    if report.title:
        lines.append(f"\\caption{{{latex_escape(report.title)}}}")
    lines += [
        f"\\begin{{tabular}}{{l{column_alignment(cells)}}}",
        "\\toprule",
        " & ".join(header) + r" \\",
        "\\midrule",
    ]
    lines += latex_body(report)
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def latex_body(report: TableReport) -> list[str]:
    cells = report.cells
    best = {column: report.best_rows(column) for column in report.best}
    lines: list[str] = []
    previous_group = None
    for position, (label, row) in enumerate(cells.iterrows()):
        group = row.get(report.group_column) if report.group_column else None
        if position and group != previous_group:
            lines.append("\\midrule")
        previous_group = group
        texts = [latex_escape(str(label))]
        for column, value in row.items():
            text = latex_escape("" if pd.isna(value) else str(value))
            texts.append(f"\\textbf{{{text}}}" if text and label in best.get(str(column), ()) else text)
        lines.append(" & ".join(texts) + r" \\")
    return lines


def column_alignment(cells: pd.DataFrame) -> str:
    """Right-aligned where every non-empty cell starts with a number, left otherwise."""
    return "".join("r" if looks_numeric(cells[column]) else "l" for column in cells.columns)


def looks_numeric(values: pd.Series) -> bool:
    texts = [str(v) for v in values if not pd.isna(v) and str(v) != ""]
    return bool(texts) and all(text.lstrip("+-−")[:1].isdigit() for text in texts)


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(char, char) for char in text)


def latex_comment(text: str) -> str:
    return text.replace("\n", " ")
