"""What every ``bench/`` script shares: the start of its flags, the machine and load lines it
prints first and last, and the rounding of its final JSON line.

Not a bench itself. The scripts run as ``python bench/<name>.py`` from the repository root
and put the root on ``sys.path`` before importing this module as ``bench._common``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def make_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every bench starts with: ``--quick`` (a shorter run, described by
    ``quick_help``); the description is the first line of the script's docstring ``doc``."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def add_config_args(p: argparse.ArgumentParser, train_size_help: str) -> None:
    """The flags of the benches that follow a run config (``configs/demo.py`` by default):
    ``--config``, ``--override``, ``--workdir`` and ``--train_size`` (``train_size_help``
    gives its defaults)."""
    p.add_argument("--config", default="configs/demo.py", help="config file[:variant]")
    p.add_argument("--override", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--workdir", default=None, help="data + tokenizer here (default: temp)")
    p.add_argument("--train_size", type=int, default=None, help=train_size_help)


def machine() -> str:
    """This machine as the benches name it: CPU, cores, Python, JAX and JAX's platform."""
    import jax

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; python "
        f"{platform.python_version()}, jax {jax.__version__} ({jax.devices()[0].platform})"
    )


def print_machine(warning: str) -> list[float]:
    """Prints `machine` and the 1/5/15-min load average, with ``warning`` when the 1-min
    load is over half the cores (other processes skew the timings); returns the load."""
    load = os.getloadavg()
    print(
        f"machine: {machine()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        + (f"  WARNING: {warning}" if load[0] > 0.5 * os.cpu_count() else "")
    )
    return list(load)


def print_total(t0: float, suffix: str = "") -> list[float]:
    """Prints the seconds since ``t0`` (a `time.perf_counter` reading) and the 1-min load
    average, then ``suffix``; returns the 1/5/15-min load."""
    load = os.getloadavg()
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end {load[0]:.2f}{suffix}")
    return list(load)


def rounded(x):
    """``x`` with every float, in nested dicts and lists too, rounded to 4 decimals."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x
