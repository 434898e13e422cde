"""``python -m bench``: every benchmark at full size, one after another, then docs/benchmarks.md."""

from __future__ import annotations

import sys

from bench import cluster, dispatch, overhead, report, scale, simulate


def main() -> int:
    overhead.main(["--threads", "1"])
    overhead.main(["--threads", "2"])
    dispatch.main([])
    scale.main([])
    cluster.main([])
    simulate.main([])
    return report.main()


if __name__ == "__main__":
    sys.exit(main())
