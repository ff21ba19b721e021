"""Text tables that fit the width they are printed at (the terminal, or ``COLUMNS`` for a pipe, else 250).

Rich squeezes every column of a table that is too wide, down to a few characters each: addresses, IDs and UUIDs
then break across lines and nothing can be read. Here the layout is decided at render time, when the width is
known:

- *text* columns (names, notes, descriptions) wrap between words; only a word longer than the column folds;
- every other column (addresses, IDs, UUIDs, drivers, numbers) is kept whole, never wrapped;
- text columns get at least 16 characters (or their longest cell); when the table still does not fit, the columns
  the table lists in ``drop`` go, in that order, until it fits, and a last line names them (``--json`` has every
  field; a wider terminal, or ``COLUMNS=200`` for a pipe, shows them).

    t = Table(None, ["ADDRESS", "NAME", "NOTES"], drop=("NOTES",))
    t.add_row("0000:18:00.0", "GP102 [GeForce GTX 1080 Ti]", "with 18:00.1")
    console.print(t)
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["Table", "TEXT_COLUMNS"]

TEXT_COLUMNS = frozenset({"NAME", "NOTES", "DESCRIPTION", "VALUE", "STATUS", "BACKING"})
_GAP = 2  # rich's default padding (0, 1) between two columns, none at the edges (pad_edge=False)
_TEXT_MIN = 16  # a text column narrower than this reads as a column of syllables


class Table:
    def __init__(self, title: str | None, columns: list[str], *, drop: tuple[str, ...] = ()) -> None:
        self.title = title
        self.columns = list(columns)
        self.drop = [c for c in drop if c in self.columns]
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: Any) -> None:
        self.rows.append(tuple("" if c is None else str(c) for c in cells))

    def _min_width(self, i: int) -> int:
        name = self.columns[i]
        cells = [r[i] for r in self.rows if i < len(r)]
        if name in TEXT_COLUMNS:  # room for its longest cell, up to _TEXT_MIN; it wraps beyond that
            return max(len(name), min(max((len(c) for c in cells), default=0), _TEXT_MIN))
        return max([len(name)] + [max((len(line) for line in c.splitlines()), default=0) for c in cells])

    def fit(self, width: int) -> tuple[list[int], list[str]]:
        """(indexes of the columns shown, names of the columns dropped) for ``width``."""
        keep = list(range(len(self.columns)))
        mins = {i: self._min_width(i) for i in keep}
        dropped: list[str] = []
        for name in self.drop:
            if sum(mins[i] for i in keep) + _GAP * (len(keep) - 1) <= width:
                break
            keep.remove(self.columns.index(name))
            dropped.append(name)
        return keep, dropped

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.table import Table as RichTable
        from rich.text import Text

        keep, dropped = self.fit(options.max_width)
        t = RichTable(title=self.title, title_justify="left", box=None, pad_edge=False, header_style="bold")
        for i in keep:
            name = self.columns[i]
            text = name in TEXT_COLUMNS
            t.add_column(name, overflow="fold", no_wrap=not text, min_width=self._min_width(i) if text else None)
        for r in self.rows:
            t.add_row(*(Text(r[i]) if i < len(r) else Text("") for i in keep))
        yield t
        if dropped and self.rows:
            yield Text(f"(not shown at {options.max_width} columns: {', '.join(dropped)}; --json has every field)")
