"""A run's report for people: ``report.md`` and ``report.html`` beside its PNG figures.

The report is assembled from plain data (tables already rendered, figure file names,
explained sample users, provenance), so anything that produced those can write one. The
HTML is the same Markdown rendered, with the figures inline. Titles and user ids are shown
as written in ``report.md`` (only what would break a table is escaped) and HTML-escaped
only on their way into ``report.html``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import markdown

from metarec.atomic import atomic_file


@dataclass
class SampleUser:
    """A test user's history and top recommendations, each with its explanation.

    ``recommendations``: (title, score, adaptation delta, [(history title, contribution)]).
    """

    user_id: object
    history: list[str]
    recommendations: list[tuple[str, float, float, list[tuple[str, float]]]]
    relevant_hits: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    title: str
    introduction: str
    results_table: str
    steps: dict[str, float]  # step name -> seconds
    figures: dict[str, str]  # caption -> PNG file name beside the report
    users: list[SampleUser]
    provenance: dict


def markdown_cell(text: str) -> str:
    """``text`` as written, safe inside a Markdown table cell: a ``|`` is escaped and line
    breaks become spaces (either would end the cell or the row); nothing else changes."""
    return " ".join(text.splitlines()).replace("|", "\\|")


def html_cell(text: str) -> str:
    """`markdown_cell` of ``text`` HTML-escaped, for the Markdown that becomes HTML (where
    a title such as ``<b>`` must not become markup)."""
    return markdown_cell(html.escape(text))


def _user_section(user: SampleUser, cell: Callable[[str], str]) -> str:
    lines = [
        f"### User {cell(str(user.user_id))}",
        "",
        f"History ({len(user.history)} items, oldest first): "
        + "; ".join(cell(title) for title in user.history),
        "",
        "| # | recommended | score | adaptation changed it by | history items that added most |",
        "|---|---|---|---|---|",
    ]
    for rank, (title, score, delta, contributors) in enumerate(user.recommendations, start=1):
        reasons = ", ".join(f"{cell(name)} ({value:+.2f})" for name, value in contributors)
        lines.append(f"| {rank} | {cell(title)} | {score:.2f} | {delta:+.2f} | {reasons} |")
    hits = "; ".join(cell(t) for t in user.relevant_hits) if user.relevant_hits else "none"
    lines += ["", f"Of these, watched next by the user (held out): {hits}.", ""]
    return "\n".join(lines)


def render_markdown(report: RunReport, cell: Callable[[str], str] = markdown_cell) -> str:
    """The report as Markdown, item titles and user ids passed through ``cell``."""
    steps = "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in report.steps.items())
    total = sum(report.steps.values())
    figures = "\n\n".join(
        f"![{caption}]({name})\n\n*{caption}*" for caption, name in report.figures.items()
    )
    packages = ", ".join(f"{k} {v}" for k, v in report.provenance.get("packages", {}).items())
    commit = report.provenance.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if report.provenance.get("git_dirty") else ""
    return "\n".join(
        [
            f"# {report.title}",
            "",
            report.introduction,
            "",
            "## Results",
            "",
            report.results_table,
            "",
            figures,
            "",
            "## Sample users",
            "",
            "Scores are the adapted model's. *Adaptation changed it by*: the score after the "
            "inner steps minus before. *History items that added most*: how much the score "
            "drops when that item is left out of the history (leave-one-out, re-adapted).",
            "",
            *[_user_section(user, cell) for user in report.users],
            "## How long each step took",
            "",
            "| step | seconds |",
            "|---|---|",
            steps,
            f"| **total** | **{total:.0f}** |",
            "",
            "## Provenance",
            "",
            f"git commit {commit}{dirty}; Python {report.provenance.get('python')}; "
            f"{report.provenance.get('platform')}; {packages}.",
            "",
        ]
    )


def write_report(folder: Path, report: RunReport) -> None:
    """Write ``report.md`` and ``report.html`` into ``folder`` (figures already there)."""
    text = render_markdown(report)
    body = markdown.markdown(render_markdown(report, html_cell), extensions=["tables"])
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report.title)}</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em}"
        "img{max-width:100%}</style></head>\n<body>\n" + body + "\n</body></html>\n"
    )
    with atomic_file(folder / "report.md") as temporary:
        temporary.write_text(text)
    with atomic_file(folder / "report.html") as temporary:
        temporary.write_text(page)
