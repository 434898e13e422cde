"""``python -m bench``: every benchmark at full size, one after another, then docs/benchmarks.md."""

from __future__ import annotations

import sys

from bench import batching, cluster, dispatch, overhead, report, scale, simulate, structured


def main() -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    steps = [("overhead, 1 thread", lambda: overhead.main(["--threads", "1"])),
             ("overhead, 2 threads", lambda: overhead.main(["--threads", "2"])),
             ("structured output", lambda: structured.main([])),
             ("continuous batching", lambda: batching.main([])),
             ("dispatch latency", lambda: dispatch.main([])), ("coordinator scale", lambda: scale.main([])),
             ("cluster experiment", lambda: cluster.main([])), ("simulator", lambda: simulate.main(["--jobs", "1000"]))]
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("benchmarks", total=len(steps))
        for name, run in steps:
            progress.update(task, description=f"benchmark: {name}")
            run()
            progress.advance(task)
    return report.main()


if __name__ == "__main__":
    sys.exit(main())
