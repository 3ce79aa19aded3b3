"""Fixed-width text tables for the console commands (``beedet.model_summary``, ``beedet.fit_anchors``)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: tuple[int, ...] = ()) -> list[str]:
    """The table's lines: a rule, the header, a rule, the rows, a rule. Columns numbered in
    ``right`` are right-aligned (numbers), the others left-aligned; trailing spaces are cut."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "=" * max(len(line(header)), *(len(line(r)) for r in rows))
    return [rule, line(header), rule, *(line(r) for r in rows), rule]
