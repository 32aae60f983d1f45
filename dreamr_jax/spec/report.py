"""Reporting of engine evaluations: atomic output files, the printed table, PNG plots.

Used by ``python -m dreamr_jax.eval``. Plots use matplotlib's object API with the Agg
canvas (`matplotlib.figure.Figure`), never ``pyplot``, so no global backend is switched and
nothing opens a window. Inputs are the summary's ``results``: one `aggregate` dict per
(engine, α) with ``"alpha"`` added (None for the baselines, which ignore α).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BASELINES = ("target_only", "draft_only")
PLOTS = ("speedup_vs_alpha.png", "accuracy_vs_alpha.png", "acceptance_by_position.png")
# Every file an evaluation writes; a new run moves an older run's set aside as a whole.
OUTPUTS = ("requests.jsonl", "summary.json", *PLOTS)
ARCHIVE = "old"
_BASELINE_STYLE = {
    "target_only": {"color": "black", "linestyle": "--"},
    "draft_only": {"color": "gray", "linestyle": ":"},
}


# ------------------------------------------------------------------------------ files


def publish(out_dir: str | os.PathLike, files: Mapping[str, bytes], run_id: str) -> Path:
    """Writes ``files`` (name -> bytes) into ``out_dir`` as one set, without losing data.

    Every file is first written in full to a temporary file next to its destination; only
    then are they moved into place with ``os.replace``, so an interrupted run leaves each
    output either whole and old or whole and new, never half written. An earlier run's
    outputs (`OUTPUTS` present in ``out_dir``) are moved, not deleted, to
    ``out_dir/old/<its run id>/`` just before; other files in ``out_dir`` are not touched.

    Returns:
      ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmps = {}
    try:
        for name, data in files.items():
            tmps[name] = _write_tmp(out_dir, name, data)
        _archive_previous(out_dir, run_id)
        for name, tmp in tmps.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out_dir


def _write_tmp(out_dir: Path, name: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _archive_previous(out_dir: Path, run_id: str) -> None:
    present = [name for name in OUTPUTS if (out_dir / name).is_file()]
    if not present:
        return
    old_id = _previous_run_id(out_dir / "summary.json")
    if old_id == run_id:  # re-publishing the same run: nothing older to keep
        return
    dest = out_dir / ARCHIVE / old_id
    n = 1
    while dest.exists():
        dest, n = out_dir / ARCHIVE / f"{old_id}.{n}", n + 1
    dest.mkdir(parents=True)
    for name in present:
        os.replace(out_dir / name, dest / name)


def _previous_run_id(summary: Path) -> str:
    try:
        run_id = json.loads(summary.read_text()).get("run_id")
        if isinstance(run_id, str) and run_id and "/" not in run_id:
            return run_id
    except (OSError, ValueError, AttributeError):
        pass
    return "unknown"


# ------------------------------------------------------------------------------ table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def table(results: Sequence[Mapping]) -> str:
    """A fixed-width table: engine, α, accuracy, acceptance, speedup (one row per run)."""
    header = ("engine", "alpha", "accuracy", "acceptance", "speedup")
    rows = [
        (
            r["engine"],
            "-" if r["alpha"] is None else f"{r['alpha']:.2f}",
            _pct(r["accuracy"]),
            _pct(r["acceptance_rate"]),
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    head, *lines = (
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
    return "\n".join([head, "-" * len(head), *lines])


def headline(summary: Mapping) -> dict:
    """The summary's headline numbers as one flat-ish JSON-ready dict (the CLI's last line)."""
    return {
        "dataset": summary["dataset"],
        "split": summary["split"],
        "requests": summary["requests"],
        "runs": [
            {k: r[k] for k in ("engine", "alpha", "accuracy", "acceptance_rate", "speedup")}
            for r in summary["results"]
        ],
        "out_dir": summary["out_dir"],
    }


# ------------------------------------------------------------------------------ plots


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _by_engine(results: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for r in results:
        if r["engine"] not in BASELINES:
            out.setdefault(r["engine"], []).append(r)
    return {e: sorted(rs, key=lambda r: r["alpha"]) for e, rs in out.items()}


def _versus_alpha(
    results: Sequence[Mapping], key: str, ylabel: str, title: str, rate: bool = False
) -> bytes:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for engine, rs in _by_engine(results).items():
        ax.plot([r["alpha"] for r in rs], [_nan(r[key]) for r in rs], marker="o", label=engine)
    for r in results:  # baselines ignore α: a horizontal reference line each
        if r["engine"] in BASELINES and r[key] is not None:
            style = _BASELINE_STYLE[r["engine"]]
            ax.axhline(r[key], linewidth=1, label=r["engine"], **style)
    ax.set_xlabel("threshold α")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if rate:
        ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize="small")
    return _png(fig)


def _acceptance_by_position(results: Sequence[Mapping]) -> bytes:
    engines = _by_engine(results)
    fig = Figure(figsize=(4 * max(1, len(engines)), 3.5), layout="constrained")
    if not engines:
        fig.text(0.5, 0.5, "no speculative engine was run", ha="center", va="center")
        return _png(fig)
    axes = fig.subplots(1, len(engines), squeeze=False)[0]
    for ax, (engine, rs) in zip(axes, engines.items(), strict=True):
        for r in rs:
            ys = [_nan(y) for y in r["acceptance_by_position"]]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"α={r['alpha']:g}")
        ax.set_title(engine)
        ax.set_xticks(range(1, max(len(r["acceptance_by_position"]) for r in rs) + 1))
        ax.set_xlabel("window position k")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("acceptance rate")
    return _png(fig)


def plots(results: Sequence[Mapping]) -> dict[str, bytes]:
    """The three `PLOTS` as PNG bytes, from the summary's ``results``."""
    return {
        "speedup_vs_alpha.png": _versus_alpha(
            results, "speedup", "speedup over target_only", "Wall-clock speedup"
        ),
        "accuracy_vs_alpha.png": _versus_alpha(
            results, "accuracy", "accuracy", "Accuracy", rate=True
        ),
        "acceptance_by_position.png": _acceptance_by_position(results),
    }
