"""Tables people can read and scripts can parse, where ids and money are never cut.

On a terminal: a Rich table whose id and money columns never wrap or shrink (other columns
wrap); when even that cannot fit the width, one `field  value` block per row instead. Piped or
redirected: tab-separated lines under a header of field names (`genq keys list | cut -f1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.table import Table

from cli.render import out


@dataclass(frozen=True)
class Column:
    field: str  #: key of the row, and the column's name in tab-separated output
    header: str
    keep: bool = False  #: an id or an amount: shown whole, never wrapped or shortened
    justify: Literal["left", "right"] = "left"


def show_table(columns: Sequence[Column], rows: list[dict[str, str]], *, title: str = "") -> None:
    """Print the rows on stdout in the form that suits where stdout goes."""
    if not out.is_terminal:
        print("\t".join(c.field for c in columns))
        for row in rows:
            print("\t".join(_one_line(row[c.field]) for c in columns))
        return
    if _fits(columns, rows, out.width):
        out.print(_rich_table(columns, rows, title))
    else:
        _print_records(columns, rows, title)


def _one_line(value: str) -> str:
    return " ".join(value.split()) if ("\t" in value or "\n" in value) else value


def _rich_table(columns: Sequence[Column], rows: list[dict[str, str]], title: str) -> Table:
    table = Table(title=title or None)
    for c in columns:
        table.add_column(
            c.header,
            justify=c.justify,
            no_wrap=c.keep,
            min_width=_width(c, rows) if c.keep else None,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[c.field] for c in columns))
    return table


def _width(column: Column, rows: list[dict[str, str]]) -> int:
    return max([cell_len(column.header), *(cell_len(row[column.field]) for row in rows)])


def _fits(columns: Sequence[Column], rows: list[dict[str, str]], width: int) -> bool:
    """Rich shrinks wrapping columns down to their longest word before it cuts any other: the
    table fits when the kept columns whole, those words and the borders do."""
    borders = 3 * len(columns) + 1  # a rule and two spaces of padding per column, one rule more
    needed = borders
    for column in columns:
        if column.keep:
            needed += _width(column, rows)
        else:
            words = [w for row in rows for w in row[column.field].split()] + [column.header]
            needed += max(cell_len(w) for w in words)
    return needed <= width


def _print_records(columns: Sequence[Column], rows: list[dict[str, str]], title: str) -> None:
    if title:
        out.print(title, markup=False)
    label = max(cell_len(c.header) for c in columns)
    for index, row in enumerate(rows):
        if index:
            out.print()
        for c in columns:
            out.print(f"{c.header.ljust(label)}  {row[c.field]}", markup=False, highlight=False)
