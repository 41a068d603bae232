"""What several benchmarks share: the process's memory, quantiles, and running main() with clean-up."""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable


def rss_mb() -> float:
    """This process's resident memory, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_main(main: Callable[[], Awaitable[Any]]) -> None:
    """asyncio.run(main()) as the exit code; an interrupt still ends in main()'s own clean-up."""
    try:
        sys.exit(asyncio.run(main()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
