"""Progress for long work: a rich bar on a terminal, periodic log lines in batch jobs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """One line to stderr (Snakemake and SLURM capture it in the job's log)."""
    print(f"[craft {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(items: Iterable[T], total: int, description: str, start: int = 0) -> Iterator[T]:
    """Iterate with a progress display; ``start`` counts work already done (resume)."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(description, total=total, completed=start)
            for item in items:
                yield item
                bar.advance(task)
        return
    t0 = time.monotonic()
    every = max(1, (total - start) // 10)
    done = start
    for item in items:
        yield item
        done += 1
        if (done - start) % every == 0 or done == total:
            rate = (done - start) / max(time.monotonic() - t0, 1e-9)
            log(f"{description}: {done}/{total} ({rate:.2f}/s)")
