"""Tables of a modality's knowledge for the terminal (``craft knowledge show``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from craft.knowledge.schema import ModalityKnowledge, load_knowledge

#: Few, short labels get a column each; otherwise they are listed by name in two columns.
MAX_LABEL_COLUMNS = 5
MAX_LABEL_CHARS = 40


def show_table(k: ModalityKnowledge) -> Table:
    """The checklist: one row per item, and which labels it must hold / must not hold for."""
    oracle = any(it.oracle_criterion for it in k.checklist)
    wide = len(k.labels) <= MAX_LABEL_COLUMNS and sum(map(len, k.labels)) <= MAX_LABEL_CHARS
    t = Table(
        title=f"{k.modality}: {len(k.checklist)} checklist items over {len(k.labels)} labels",
        caption="✓ must hold for the label   ✗ must not hold   blank: does not apply   "
        "pol. + the statement asserts the finding, - its absence   dim: every label",
    )
    t.add_column("id", style="bold", no_wrap=True)
    t.add_column("finding", overflow="fold")
    t.add_column("statement", ratio=3, min_width=20)
    t.add_column("pol.", justify="center")
    t.add_column("w", justify="right")
    if wide:
        for lab in k.labels:
            t.add_column(lab, justify="center", overflow="fold")
    else:
        t.add_column("✓ holds for", ratio=1, style="green")
        t.add_column("✗ must not hold for", ratio=1, style="red")
    if oracle:
        t.add_column("oracle")
    for it in k.checklist:
        row = [
            it.id,
            it.finding,
            it.statement,
            "+" if it.polarity == "present" else "-",
            f"{it.weight:g}",
        ]
        if wide:
            for lab in k.labels:
                v = it.expected.get(lab)
                row.append("" if v is None else "[green]✓[/]" if v else "[red]✗[/]")
        else:
            yes = [lab for lab in k.labels if it.expected.get(lab) is True]
            no = [lab for lab in k.labels if it.expected.get(lab) is False]
            row += ["all" if len(yes) == len(k.labels) else ", ".join(yes), ", ".join(no)]
        if oracle:
            row.append(it.oracle_criterion or "")
        t.add_row(*row, style="dim" if it.scope == "modality" else None)
    return t


def prompts_table(k: ModalityKnowledge) -> Table:
    """The enriched prompts: one row per prompt, with its source."""
    t = Table(title=f"{k.modality}: enriched prompts")
    t.add_column("label", style="bold", no_wrap=True)
    t.add_column("prompt", ratio=4)
    t.add_column("source")
    for name, lab in k.labels.items():
        for i, p in enumerate(lab.prompts):
            t.add_row(name if i == 0 else "", p.text, p.source)
    return t


def read_knowledge_file(path: Path | str) -> ModalityKnowledge:
    """A knowledge JSON, or a review YAML (by suffix)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        from craft.knowledge.review import load_review

        return load_review(path)
    return load_knowledge(path)


def print_knowledge(
    k: ModalityKnowledge, prompts: bool = False, console: Console | None = None
) -> None:
    """Print the checklist table (and the prompts table) of ``k``."""
    console = console or Console()
    console.print(show_table(k))
    if prompts:
        console.print(prompts_table(k))
