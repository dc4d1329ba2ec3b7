"""``taskfarmer report WORKDIR``: one self-contained HTML page of plots and tables from ``accounting.tsv``.

The page embeds its plots as PNG (``data:`` URLs) and needs nothing else: no network, no script, no other file, so
it can be mailed or copied off the cluster. The figures come from :mod:`taskfarmer.report_data`; this module only
draws and writes them. matplotlib (the ``report`` extra) is imported here only, with its file-only Agg backend.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
from typing import TYPE_CHECKING, Final

from taskfarmer import report_data
from taskfarmer.errors import MissingDependencyError, TaskFarmerError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from types import ModuleType

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from taskfarmer.report_data import NamedAttempt, ReportData
    from taskfarmer.store import WorkDir

_PLOT_POINTS: Final = 20_000  # at most this many points per cumulative curve: a million would only slow the drawing
_STYLE: Final = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
span.num { display: block; text-align: right; }
img { display: block; max-width: 100%; margin: 0.5em 0 1.5em; }
code { word-break: break-all; }
"""


def write_report(store: WorkDir, output: Path) -> Path:
    """Compute the figures of *store* and write its report to *output*.

    :raises MissingDependencyError: when matplotlib is not installed
    :raises TaskFarmerError: when *output* cannot be written (the page is then not written at all)
    :returns: *output*
    """
    _check_output(output)  # before the figures: they take seconds on a large farm
    pyplot = _pyplot()
    data = report_data.collect(store)
    plots = [] if not data.accounting.size else [_png(figure, pyplot) for figure in _figures(data, pyplot)]
    _write(output, render_html(data, plots=plots))
    return output


def _check_output(output: Path) -> None:
    """:raises TaskFarmerError: when *output* is plainly no file the report can be written to"""
    parent = output.parent
    # os.path.isdir: False rather than Path.is_dir's PermissionError for a path this user cannot reach
    if os.path.isdir(output):  # noqa: PTH112
        problem = "it is a directory (give the file to write in it, such as report.html)"
    elif not os.path.isdir(parent):  # noqa: PTH112
        problem = f"{parent} is no existing directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"the directory {parent} is not writable"
    else:
        return
    msg = f"cannot write the report to {output}: {problem}"
    raise TaskFarmerError(msg)


def _write(output: Path, text: str) -> None:
    """Write *text* to *output* whole or not at all: a browser reloading it never sees half a page.

    :raises TaskFarmerError: when the write fails (disk full, permission denied); no partial file is left
    """
    partial = output.with_name(f".{output.name}.{os.getpid()}")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(output)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the failure to report is the write's
            partial.unlink(missing_ok=True)
        msg = f"cannot write the report to {output}: {exc.strerror or exc}"
        raise TaskFarmerError(msg) from exc


def _pyplot() -> ModuleType:
    try:
        import matplotlib as mpl  # noqa: PLC0415  # an optional dependency, for this command only
    except ImportError as exc:
        msg = "the report needs matplotlib (>= 3.7): pip install matplotlib"
        raise MissingDependencyError(msg) from exc
    mpl.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415  # after the backend is chosen

    return plt


def _figures(data: ReportData, pyplot: ModuleType) -> list[Figure]:
    acc = data.accounting
    origin = min(acc.start)
    scale, unit = _time_unit(max(acc.end) - origin)
    figures = []
    for draw in (_draw_finished, _draw_running):
        figure, axes = pyplot.subplots(figsize=(10, 4))
        draw(axes, data, origin=origin, scale=scale)
        axes.set_xlabel(f"{unit} since {report_data.utc(origin)}")
        figures.append(figure)
    for title, values, label in (
        ("Task duration", report_data.durations(acc), "seconds per attempt"),
        ("Peak memory", report_data.peak_memory_mb(acc), "peak resident memory per attempt (MiB)"),
    ):
        figure, axes = pyplot.subplots(figsize=(10, 3.5))
        _draw_histogram(axes, values, title=title, label=label)
        figures.append(figure)
    return figures


def _time_unit(span: float) -> tuple[float, str]:
    """:returns: the divisor and the name of the unit that suits a time axis *span* seconds long"""
    return (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes") if span > 180 else (1.0, "seconds")


def _draw_finished(axes: Axes, data: ReportData, *, origin: float, scale: float) -> None:
    ends, done = report_data.finished_over_time(data.accounting)
    step = max(len(ends) // _PLOT_POINTS, 1)
    keep = [*range(0, len(ends), step), len(ends) - 1] if ends else []
    times = [0.0, *((ends[i] - origin) / scale for i in keep)]  # from 0 at the first start
    axes.step(times, [0, *(done[i] for i in keep)], where="post", color="C0")
    axes.set_title(f"Tasks finished over time ({len(ends)} attempts succeeded)")
    axes.set_ylabel("tasks finished")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)


def _draw_running(axes: Axes, data: ReportData, *, origin: float, scale: float) -> None:
    for host, (times, running) in sorted(report_data.running_by_host(data.accounting).items()):
        axes.step([(t - origin) / scale for t in times], running, where="post", label=host)
    axes.set_title("Running tasks per host")
    axes.set_ylabel("tasks running")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper right", fontsize="small", ncols=max(len(data.accounting.hosts) // 10, 1))
    axes.grid(alpha=0.3)


def _draw_histogram(axes: Axes, values: list[float], *, title: str, label: str) -> None:
    edges, counts = report_data.histogram(values)
    axes.set_title(f"{title} ({len(values)} attempts)")
    axes.set_xlabel(label)
    axes.set_ylabel("attempts")
    if not edges:
        axes.text(0.5, 0.5, "none recorded", ha="center", va="center", transform=axes.transAxes)
        return
    axes.stairs(counts, edges, fill=True, color="C0")
    if edges[0] > 0 and edges[-1] / edges[0] > 100:
        axes.set_xscale("log")
    axes.grid(alpha=0.3)


def _png(figure: Figure, pyplot: ModuleType) -> str:
    """:returns: *figure* as a base64 PNG (the figure is closed)"""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(data: ReportData, *, plots: list[str]) -> str:
    """:returns: the report page of *data*, with *plots* (base64 PNGs) embedded in order"""
    title = f"pytaskfarmer report: {data.workdir}"
    parts = [
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>",
        _table(("", ""), [(f"<b>{html.escape(k)}</b>", html.escape(v)) for k, v in report_data.header_rows(data)]),
    ]
    if not data.accounting.size:
        parts.append("<p>No task has run yet: accounting.tsv holds no attempt. Run the report again later.</p>")
    parts += [f"<img alt='plot {i + 1}' src='data:image/png;base64,{png}'>" for i, png in enumerate(plots)]
    parts += _failures(data)
    parts += _slowest(data)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _failures(data: ReportData) -> list[str]:
    parts = ["<h2>Failed tasks</h2>"]
    if not data.failures_by_status:
        return [*parts, "<p>No task failed.</p>"]
    parts.append(_table(("status", "tasks"), [(_code(s), _num(n)) for s, n in data.failures_by_status.items()]))
    rows = [(_num(t.task), _code(t.status), _code(t.command), _code(_log(data, t))) for t in data.failed_tasks]
    parts.append(_table(("task", "status", "command", "log"), rows))
    hidden = sum(data.failures_by_status.values()) - len(data.failed_tasks)
    if hidden > 0:
        parts.append(f"<p>... and {hidden} more: see <code>{html.escape(data.workdir)}/failed</code>.</p>")
    attempts = data.accounting.attempts_by_status
    parts += [
        "<h3>Attempts by status</h3>",
        _table(("status", "attempts"), [(_code(s), _num(n)) for s, n in attempts.items()]),
    ]
    return parts


def _slowest(data: ReportData) -> list[str]:
    if not data.accounting.slowest:
        return []
    rows = [
        (
            _num(a.task),
            _num(a.attempt),
            _code(a.status),
            f"{a.seconds:.1f}",
            html.escape(a.host),
            _code(a.command),
            _code(_log(data, a)),
        )
        for a in data.accounting.slowest
    ]
    return [
        "<h2>Slowest attempts</h2>",
        _table(("task", "attempt", "status", "seconds", "host", "command", "log"), rows),
    ]


def _log(data: ReportData, attempt: NamedAttempt) -> str:
    """:returns: the log of *attempt* as a path a reader can open (logs are recorded relative to the workdir)"""
    return f"{data.workdir}/{attempt.log}" if attempt.log else ""


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header) if any(header) else ""
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}\n{body}\n</table>"


def _code(text: str) -> str:
    return f"<code>{html.escape(text)}</code>"


def _num(value: float) -> str:
    return f"<span class='num'>{value}</span>"
