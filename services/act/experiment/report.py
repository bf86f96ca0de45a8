"""The report of a study or a demo run: CSV, Markdown, PNG plots and one self-contained HTML page.

`report_tables` turns `StudyResults` into tables (mean ± std over seeds); Markdown, HTML and
the demo's terminal table all render those same tables. Plots use matplotlib's Agg backend;
the HTML embeds them as base64 and escapes every text, so the page needs nothing else.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from act.experiment.study import ROW_BY_KEY, DatasetResult, RowResult, StudyResults

RESULTS_CSV = "results.csv"
DATASETS_CSV = "datasets.csv"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
REPORT_HTML = "report.html"
BEST_PAPER_ROWS = ("act-exp", "act-thre")  # the paper's "Human–ACT gap" takes its ACT losses


@dataclass
class Table:
    """A titled table of text cells, rendered to Markdown, HTML and the terminal alike."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Figure:
    name: str  # file name
    title: str
    png: bytes


@dataclass
class ReportFiles:
    directory: Path
    files: list[Path] = field(default_factory=list)

    @property
    def html(self) -> Path:
        return self.directory / REPORT_HTML


# ----------------------------------------------------------------------------- numbers


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def _points(values: Sequence[float], digits: int = 2) -> str:
    """Mean ± sample std over seeds, of fractions shown in percent (points)."""
    if not values:
        return "—"
    mean, std = _mean_std([100.0 * value for value in values])
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _plain(values: Sequence[float | None], digits: int = 3) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "—"
    mean, std = _mean_std(present)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _datasets_in_order(results: StudyResults) -> list[str]:
    names = [result.dataset for result in results.datasets]
    return list(dict.fromkeys(names + [row.dataset for row in results.rows]))


def _by_dataset(results: StudyResults) -> dict[str, list[DatasetResult]]:
    grouped: dict[str, list[DatasetResult]] = defaultdict(list)
    for result in results.datasets:
        grouped[result.dataset].append(result)
    return grouped


def _accuracies(rows: Iterable[RowResult]) -> dict[tuple[str, str, float | None], dict[int, float]]:
    """(dataset, row, budget factor) -> seed -> test accuracy."""
    table: dict[tuple[str, str, float | None], dict[int, float]] = defaultdict(dict)
    for row in rows:
        table[(row.dataset, row.row, row.budget_factor)][row.seed] = row.test_accuracy
    return table


def _shares(rows: Iterable[RowResult]) -> dict[tuple[str, str, float | None], list[float]]:
    table: dict[tuple[str, str, float | None], list[float]] = defaultdict(list)
    for row in rows:
        table[(row.dataset, row.row, row.budget_factor)].append(row.human_share)
    return table


def _paired(first: dict[int, float], second: dict[int, float], sign: float = 1.0) -> list[float]:
    """first - second per seed both have (sign = -1 reverses)."""
    return [sign * (first[seed] - second[seed]) for seed in sorted(first) if seed in second]


def _row_title(results: StudyResults, key: str) -> str:
    return results.row_titles.get(key, key)


def _main_rows(results: StudyResults) -> list[tuple[str, float | None]]:
    """The rows of the paper-style table: no-budget rows, sweep rows at the main factor, and
    the pilot rows, in the order of ROWS."""
    present = {(row.row, row.budget_factor) for row in results.rows}
    ordered: list[tuple[str, float | None]] = []
    for key in dict.fromkeys(row.row for row in results.rows):
        spec = ROW_BY_KEY.get(key)
        factor = results.main_factor if spec is not None and spec.budget == "sweep" else None
        if (key, factor) in present:
            ordered.append((key, factor))
    return ordered


# ----------------------------------------------------------------------------- tables


def downstream_table(results: StudyResults) -> Table:
    """Test accuracy (%) per row and data set, with the human label share, and the gaps."""
    datasets = _datasets_in_order(results)
    accuracy = _accuracies(results.rows)
    shares = _shares(results.rows)
    body: list[list[str]] = []
    for key, factor in _main_rows(results):
        cells = [_row_title(results, key)]
        for dataset in datasets:
            seeds = accuracy.get((dataset, key, factor), {})
            cell = _points(list(seeds.values()))
            share = shares.get((dataset, key, factor), [])
            if key not in ("human-ce", "machine-ce") and share:
                cell += f" ({100.0 * float(np.mean(share)):.1f}% human)"
            cells.append(cell)
        body.append(cells)

    def gap_row(title: str, other: str, other_factor: float | None) -> list[str] | None:
        cells = [title]
        found = False
        for dataset in datasets:
            human = accuracy.get((dataset, "human-ce", None), {})
            row = accuracy.get((dataset, other, other_factor), {})
            gaps = _paired(human, row)
            found = found or bool(gaps)
            cells.append(_points(gaps))
        return cells if found else None

    gaps = [gap_row("Human–Machine gap (points)", "machine-ce", None)]
    best_cells = ["Human–ACT gap, better of exp/thre (points)"]
    for dataset in datasets:
        human = accuracy.get((dataset, "human-ce", None), {})
        candidates = {
            key: accuracy.get((dataset, key, results.main_factor), {}) for key in BEST_PAPER_ROWS
        }
        candidates = {key: seeds for key, seeds in candidates.items() if seeds}
        if not candidates:
            best_cells.append("—")
            continue
        best = max(candidates, key=lambda key: float(np.mean(list(candidates[key].values()))))
        best_cells.append(
            f"{_points(_paired(human, candidates[best]))} [{best.removeprefix('act-')}]"
        )
    if any(cell != "—" for cell in best_cells[1:]):
        gaps.append(best_cells)
    gaps.append(gap_row("Human–ACT default gap (points)", "act-default", results.main_factor))
    for key, factor in _main_rows(results):
        if ROW_BY_KEY.get(key) is not None and ROW_BY_KEY[key].budget == "pilot":
            gaps.append(gap_row(f"Human–{ROW_BY_KEY[key].short} gap (points)", key, factor))
    body.extend(row for row in gaps if row is not None)
    budget = (
        f"sweep rows at B = {results.main_factor:g} × the pool's true error rate × N"
        if results.main_factor is not None
        else "rows at the budget the pilot recommends"
    )
    return Table(
        title="Downstream test accuracy (%)",
        header=["Training data — loss", *[_dataset_title(results, name) for name in datasets]],
        rows=body,
        note=(
            f"{_over_seeds(results)}; {budget}. In parentheses: the share of the pool with a "
            "human label used in training (reviews, including the pilot for the pilot rows). "
            "Gaps are human-only minus the row, per seed."
        ),
    )


def _over_seeds(results: StudyResults) -> str:
    seeds = len({row.seed for row in results.rows})
    return "One seed" if seeds == 1 else f"Mean ± sample std over {seeds} seeds"


def _dataset_title(results: StudyResults, name: str) -> str:
    for result in results.datasets:
        if result.dataset == name:
            return result.title
    return name


def gap_closed_table(results: StudyResults) -> Table | None:
    """Share of the human–machine gap each ACT row closes, per data set, at every budget."""
    accuracy = _accuracies(results.rows)
    datasets = _datasets_in_order(results)
    keys = [
        (key, factor)
        for key, factor in dict.fromkeys((row.row, row.budget_factor) for row in results.rows)
        if key not in ("human-ce", "machine-ce")
    ]
    if not keys:
        return None
    body = []
    for key, factor in sorted(keys, key=lambda pair: (_row_order(pair[0]), pair[1] or 0.0)):
        label = _row_title(results, key) + ("" if factor is None else f" @ {factor:g}×e")
        cells = [label]
        for dataset in datasets:
            human = accuracy.get((dataset, "human-ce", None), {})
            machine = accuracy.get((dataset, "machine-ce", None), {})
            row = accuracy.get((dataset, key, factor), {})
            shares = [
                (row[seed] - machine[seed]) / (human[seed] - machine[seed])
                for seed in row
                if seed in human and seed in machine and human[seed] != machine[seed]
            ]
            cells.append(_points(shares, digits=0) if shares else "—")
        body.append(cells)
    return Table(
        title="Share of the human–machine gap closed (%)",
        header=["Row", *[_dataset_title(results, name) for name in datasets]],
        rows=body,
        note="(row − machine) / (human − machine) per seed, mean ± std; 100% = as good as "
        "human-only training, 0% = no better than machine-only.",
    )


def _row_order(key: str) -> int:
    keys = list(ROW_BY_KEY)
    return keys.index(key) if key in keys else len(keys)


def sweep_tables(results: StudyResults) -> list[Table]:
    """Per data set: accuracy of every sweep row at every budget factor."""
    accuracy = _accuracies(results.rows)
    shares = _shares(results.rows)
    factors = sorted({row.budget_factor for row in results.rows if row.budget_factor is not None})
    if not factors:
        return []
    tables = []
    for dataset in _datasets_in_order(results):
        keys = [
            key
            for key in dict.fromkeys(row.row for row in results.rows if row.dataset == dataset)
            if any((dataset, key, factor) in accuracy for factor in factors)
        ]
        body = []
        for key in keys:
            body.append(
                [
                    _row_title(results, key),
                    *[_points(list(accuracy.get((dataset, key, f), {}).values())) for f in factors],
                ]
            )
        human_shares = [
            _points(shares.get((dataset, "act-default", factor), []), digits=1)
            for factor in factors
        ]
        body.append(["Human labels, top-B (% of pool)", *human_shares])
        for key in ("human-ce", "machine-ce"):
            seeds = accuracy.get((dataset, key, None), {})
            if seeds:
                body.append(
                    [_row_title(results, key), *[_points(list(seeds.values()))] * len(factors)]
                )
        tables.append(
            Table(
                title=f"Budget sweep — {_dataset_title(results, dataset)}: test accuracy (%)",
                header=["Row", *[f"B = {factor:g} × e·N" for factor in factors]],
                rows=body,
                note="e = the pool's true annotator error rate; human-only and machine-only "
                "rows do not depend on the budget (repeated for comparison).",
            )
        )
    return tables


def annotation_table(results: StudyResults) -> Table:
    """Annotator and criticizer quality, budget sensitivity (AQG at b = e, ABS, ABS*)."""
    body = []
    for entries in _by_dataset(results).values():
        aqg_at_error = []
        for entry in entries:
            grid = np.asarray(entry.curve_grid)
            curve = np.asarray(entry.curve_accuracy)
            aqg_at_error.append(float(np.interp(entry.error_rate, grid, curve) - curve[0]))
        body.append(
            [
                entries[0].title,
                entries[0].annotator,
                entries[0].criticizer,
                _points([1.0 - entry.error_rate for entry in entries]),
                _plain([entry.criticizer_quality.auroc for entry in entries]),
                _plain([entry.criticizer_quality.auprc for entry in entries]),
                _plain([entry.criticizer_quality.ece for entry in entries]),
                _points(aqg_at_error),
                _plain([entry.abs for entry in entries], digits=4),
                _plain([entry.abs_star for entry in entries]),
            ]
        )
    return Table(
        title="Annotation quality on the pool",
        header=[
            "Data set",
            "Annotator",
            "Criticizer",
            "Annotator acc. (%)",
            "AUROC",
            "AUPRC",
            "ECE",
            "AQG at b = e (points)",
            "ABS",
            "ABS*",
        ],
        rows=body,
        note="AQG(b) = acc(b) − acc(0) after reviewing the top ⌈bN⌉ items by eps; ABS = ∫ AQG; "
        "ABS* = (ABS − e/2) / (e − e²/2 − e/2): 1 for a perfect criticizer, 0 for a random one "
        "(our normalisation; the paper's is not public).",
    )


def pilot_table(results: StudyResults) -> Table:
    """The pilot: the estimated error against the truth and the budgets it recommends."""
    body = []
    accuracy = _accuracies(results.rows)
    for dataset, entries in _by_dataset(results).items():
        rest = [entry.pilot.recommendation.n_items for entry in entries]
        intervals = ", ".join(
            f"[{100 * entry.pilot.error.lower:.1f}, {100 * entry.pilot.error.upper:.1f}]"
            for entry in entries
        )
        human = accuracy.get((dataset, "human-ce", None), {})
        pilot_gap = _paired(human, accuracy.get((dataset, "act-pilot-recommended", None), {}))
        body.append(
            [
                entries[0].title,
                _plain([entry.pilot.reviewed for entry in entries], digits=0),
                _points([entry.error_rate for entry in entries]),
                _points([entry.pilot.error.estimate for entry in entries]),
                intervals,
                _points(
                    [e.pilot.recommendation.paper / n for e, n in zip(entries, rest, strict=True)],
                    1,
                ),
                _points(
                    [
                        e.pilot.recommendation.calibrated / n
                        for e, n in zip(entries, rest, strict=True)
                        if e.pilot.recommendation.calibrated is not None
                    ],
                    1,
                ),
                _points(
                    [
                        e.pilot.recommendation.recommended / n
                        for e, n in zip(entries, rest, strict=True)
                    ],
                    1,
                ),
                _points(pilot_gap),
            ]
        )
    return Table(
        title="Pilot review, estimated error and recommended budget",
        header=[
            "Data set",
            "Pilot reviews",
            "True error (%)",
            "ê (%)",
            "95% interval of ê per seed",
            "Paper B = 1.1·ê·N (% of rest)",
            "Calibrated B (% of rest)",
            "Recommended B (% of rest)",
            "Human − ACT at recommended B (points)",
        ],
        rows=body,
        note="The pilot is a uniform audit of the pool (systematic draw, keyed randomness); ê "
        "is its Horvitz–Thompson estimate. 'Rest' = the pool items the pilot did not review; "
        "the calibrated budget is the smallest B whose expected residual error (eps calibrated "
        "isotonically on the pilot) is under 1%; recommended = the smaller of the two.",
    )


def pro_max_table(results: StudyResults) -> Table | None:
    """The paper's "Pro Max" choice on the pilot items, per data set."""
    body = []
    for entries in _by_dataset(results).values():
        chosen = [entry.pilot.pro_max for entry in entries if entry.pilot.pro_max is not None]
        if not chosen:
            continue
        accuracies: dict[str, list[float]] = defaultdict(list)
        for selection in chosen:
            for model in selection.ranking:
                accuracies[model.name].append(model.accuracy)
        picks = defaultdict(int)
        for selection in chosen:
            picks[(selection.annotator, selection.criticizer)] += 1
        ranking = "; ".join(
            f"{name}: {_points(values)}%"
            for name, values in sorted(accuracies.items(), key=lambda item: -np.mean(item[1]))
        )
        choice = "; ".join(
            f"annotator {annotator}, criticizer {critic} ({count}/{len(chosen)} seeds)"
            for (annotator, critic), count in sorted(picks.items(), key=lambda item: -item[1])
        )
        unclear = sum(selection.top_two_indistinguishable for selection in chosen)
        body.append(
            [
                entries[0].title,
                ranking,
                choice,
                f"{unclear}/{len(chosen)}",
                entries[0].annotator,
            ]
        )
    if not body:
        return None
    return Table(
        title="“Pro Max” model choice on the pilot items",
        header=[
            "Data set",
            "Candidate accuracy on the pilot",
            "Choice (best = annotator, second = criticizer)",
            "Top two indistinguishable (95% Wilson intervals overlap)",
            "Configured annotator",
        ],
        rows=body,
        note="act.core.selection.pro_max; the study reports the choice and keeps the configured "
        "roles.",
    )


def datasets_table(results: StudyResults) -> Table:
    body = []
    for entries in _by_dataset(results).values():
        first = entries[0]
        body.append(
            [
                first.title,
                f"{first.n_pool} / {first.n_test}",
                first.downstream_model,
                first.provenance,
            ]
        )
    return Table(
        title="Data sets",
        header=["Data set", "Pool / test items", "Downstream model", "Provenance"],
        rows=body,
    )


def settings_table(results: StudyResults) -> Table:
    rows = [[name, value] for name, value in results.settings.items()]
    rows.append(["elapsed", f"{results.elapsed_seconds:.0f} s"])
    return Table(title="Settings", header=["Setting", "Value"], rows=rows)


def report_tables(results: StudyResults) -> list[Table]:
    """Every table of the report, in order."""
    tables = [settings_table(results), datasets_table(results), downstream_table(results)]
    closed = gap_closed_table(results)
    if closed is not None:
        tables.append(closed)
    tables.extend(sweep_tables(results))
    tables.extend([annotation_table(results), pilot_table(results)])
    chosen = pro_max_table(results)
    if chosen is not None:
        tables.append(chosen)
    return tables


# ----------------------------------------------------------------------------- figures


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _grid(count: int) -> tuple[int, int]:
    columns = min(count, 4)
    return math.ceil(count / columns), columns


def _hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide the panels of a grid of subplots after the first `used`."""
    for axis in axes.ravel()[used:]:
        axis.set_visible(False)


def _png(figure: object) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps figures until then)."""
    plt = _pyplot()
    figure.tight_layout()  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)
    return buffer.getvalue()


def accuracy_figure(results: StudyResults) -> Figure:
    """Bars: test accuracy of every row of the main table, per data set (mean ± std)."""
    plt = _pyplot()
    datasets = _datasets_in_order(results)
    accuracy = _accuracies(results.rows)
    rows = _main_rows(results)
    n_rows, n_columns = _grid(len(datasets))
    figure, axes = plt.subplots(
        n_rows,
        n_columns,
        figsize=(4.6 * n_columns, 0.45 * len(rows) * n_rows + 1.2),
        squeeze=False,
    )
    for index, dataset in enumerate(datasets):
        axis = axes[index // n_columns][index % n_columns]
        means, stds, labels = [], [], []
        for key, factor in rows:
            values = [100.0 * v for v in accuracy.get((dataset, key, factor), {}).values()]
            means.append(float(np.mean(values)) if values else np.nan)
            stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            labels.append(key)
        positions = np.arange(len(rows))
        axis.barh(positions, means, xerr=stds, color="#4c72b0", alpha=0.85)
        axis.set_yticks(positions, labels if index % n_columns == 0 else [""] * len(labels))
        axis.invert_yaxis()
        finite = [m for m in means if np.isfinite(m)]
        low = max(0.0, min(finite) - 10.0) if finite else 0.0
        axis.set_xlim(low, 100.0)
        axis.set_title(_dataset_title(results, dataset), fontsize=9)
        axis.set_xlabel("test accuracy (%)", fontsize=8)
        axis.tick_params(labelsize=7)
    _hide_unused(axes, len(datasets))
    return Figure("accuracy_by_row.png", "Test accuracy per row (main table)", _png(figure))


def sensitivity_figure(results: StudyResults) -> Figure:
    """Budget sensitivity curves acc(b) per data set (mean over seeds), error rate marked."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for entries in _by_dataset(results).values():
        grid = np.asarray(entries[0].curve_grid)
        curve = np.mean([entry.curve_accuracy for entry in entries], axis=0)
        (line,) = axis.plot(100 * grid, 100 * curve, label=entries[0].title, linewidth=1.4)
        error = float(np.mean([entry.error_rate for entry in entries]))
        axis.plot(
            [100 * error],
            [100 * float(np.interp(error, grid, curve))],
            "o",
            color=line.get_color(),
            markersize=4,
        )
    axis.set_xlabel("budget b (% of items reviewed, top by eps)")
    axis.set_ylabel("label accuracy acc(b) (%)")
    axis.set_xlim(0, 60)
    axis.set_title("Budget sensitivity (dot: b = error rate)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return Figure("budget_sensitivity.png", "Budget sensitivity curves", _png(figure))


def budget_figure(results: StudyResults) -> Figure | None:
    """Test accuracy against the budget factor for each sweep row, per data set."""
    factors = sorted({row.budget_factor for row in results.rows if row.budget_factor is not None})
    if not factors:
        return None
    plt = _pyplot()
    datasets = _datasets_in_order(results)
    accuracy = _accuracies(results.rows)
    n_rows, n_columns = _grid(len(datasets))
    figure, axes = plt.subplots(
        n_rows, n_columns, figsize=(4.2 * n_columns, 3.3 * n_rows), squeeze=False
    )
    keys = [key for key in ROW_BY_KEY if ROW_BY_KEY[key].budget == "sweep"]
    for index, dataset in enumerate(datasets):
        axis = axes[index // n_columns][index % n_columns]
        for key in keys:
            means = [
                100 * float(np.mean(list(accuracy[(dataset, key, f)].values())))
                if (dataset, key, f) in accuracy
                else np.nan
                for f in factors
            ]
            if not np.isfinite(means).any():
                continue
            axis.plot(factors, means, marker="o", markersize=3, label=key, linewidth=1.2)
        for key, style in (("human-ce", "--"), ("machine-ce", ":")):
            seeds = accuracy.get((dataset, key, None))
            if seeds:
                axis.axhline(
                    100 * float(np.mean(list(seeds.values()))),
                    color="black",
                    linestyle=style,
                    linewidth=1.0,
                    label=key,
                )
        axis.set_title(_dataset_title(results, dataset), fontsize=9)
        axis.set_xlabel("budget / (error rate · N)", fontsize=8)
        axis.set_ylabel("test accuracy (%)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if index == 0:
            axis.legend(fontsize=6)
    _hide_unused(axes, len(datasets))
    return Figure("accuracy_vs_budget.png", "Test accuracy against the budget", _png(figure))


def report_figures(results: StudyResults) -> list[Figure]:
    figures = [accuracy_figure(results), sensitivity_figure(results)]
    budget = budget_figure(results)
    if budget is not None:
        figures.append(budget)
    return figures


# ----------------------------------------------------------------------------- rendering


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: StudyResults, tables: list[Table], figures: list[Figure]) -> str:
    lines = [f"# {results.title}", ""]
    for note in results.notes:
        lines += [note, ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in table.header) + " |")
        lines.append("|" + "---|" * len(table.header))
        for row in table.rows:
            lines.append("| " + " | ".join(_markdown_cell(cell) for cell in row) + " |")
        if table.note:
            lines += ["", table.note]
        lines.append("")
    lines += ["## Figures", ""]
    for figure in figures:
        lines += [f"![{figure.title}]({figure.name})", ""]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
p.note { font-size: 0.8em; color: #555; max-width: 75em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def html_page(results: StudyResults, tables: list[Table], figures: list[Figure]) -> str:
    """One HTML page with everything inline: escaped text, base64 PNGs, no external asset."""
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(results.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(results.title)}</h1>",
    ]
    parts += [f"<p>{escape(note)}</p>" for note in results.notes]
    for table in tables:
        parts.append(f"<h2>{escape(table.title)}</h2><table><thead><tr>")
        parts += [f"<th>{escape(cell)}</th>" for cell in table.header]
        parts.append("</tr></thead><tbody>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</tbody></table>")
        if table.note:
            parts.append(f'<p class="note">{escape(table.note)}</p>')
    parts.append("<h2>Figures</h2>")
    for figure in figures:
        encoded = base64.b64encode(figure.png).decode("ascii")
        parts.append(
            f"<h3>{escape(figure.title)}</h3>"
            f'<img alt="{escape(figure.title)}" src="data:image/png;base64,{encoded}">'
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def rich_table(table: Table) -> object:
    """The table for the terminal (a rich Table)."""
    from rich.table import Table as RichTable

    shown = RichTable(title=table.title, caption=table.note or None, caption_justify="left")
    for index, name in enumerate(table.header):
        shown.add_column(name, justify="left" if index == 0 else "right", overflow="fold")
    for row in table.rows:
        shown.add_row(*row)
    return shown


def _write_csv(path: Path, header: list[str], rows: Iterable[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_results_csv(results: StudyResults, directory: Path) -> list[Path]:
    rows_path = directory / RESULTS_CSV
    _write_csv(
        rows_path,
        [
            "dataset",
            "seed",
            "row",
            "row_title",
            "budget_factor",
            "reviews",
            "human_share",
            "test_accuracy",
            "weights_clipped",
            "n_train",
            "n_test",
        ],
        (
            [
                row.dataset,
                row.seed,
                row.row,
                _row_title(results, row.row),
                "" if row.budget_factor is None else row.budget_factor,
                row.reviews,
                f"{row.human_share:.6f}",
                f"{row.test_accuracy:.6f}",
                row.weights_clipped,
                row.n_train,
                row.n_test,
            ]
            for row in results.rows
        ),
    )
    datasets_path = directory / DATASETS_CSV
    _write_csv(
        datasets_path,
        [
            "dataset",
            "seed",
            "annotator",
            "criticizer",
            "n_pool",
            "n_test",
            "error_rate",
            "auroc",
            "auprc",
            "ece",
            "brier",
            "abs",
            "abs_star",
            "pilot_reviews",
            "error_estimate",
            "error_lower",
            "error_upper",
            "budget_rest_items",
            "budget_paper",
            "budget_calibrated",
            "budget_recommended",
            "pro_max_annotator",
            "pro_max_criticizer",
            "pro_max_top_two_indistinguishable",
        ],
        (
            [
                entry.dataset,
                entry.seed,
                entry.annotator,
                entry.criticizer,
                entry.n_pool,
                entry.n_test,
                f"{entry.error_rate:.6f}",
                _optional(entry.criticizer_quality.auroc),
                _optional(entry.criticizer_quality.auprc),
                f"{entry.criticizer_quality.ece:.6f}",
                f"{entry.criticizer_quality.brier:.6f}",
                f"{entry.abs:.6f}",
                _optional(entry.abs_star),
                entry.pilot.reviewed,
                f"{entry.pilot.error.estimate:.6f}",
                f"{entry.pilot.error.lower:.6f}",
                f"{entry.pilot.error.upper:.6f}",
                entry.pilot.recommendation.n_items,
                entry.pilot.recommendation.paper,
                ""
                if entry.pilot.recommendation.calibrated is None
                else entry.pilot.recommendation.calibrated,
                entry.pilot.recommendation.recommended,
                entry.pilot.pro_max.annotator if entry.pilot.pro_max else "",
                entry.pilot.pro_max.criticizer if entry.pilot.pro_max else "",
                entry.pilot.pro_max.top_two_indistinguishable if entry.pilot.pro_max else "",
            ]
            for entry in results.datasets
        ),
    )
    return [rows_path, datasets_path]


def _optional(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_report(results: StudyResults, directory: Path) -> ReportFiles:
    """Writes results.csv, datasets.csv, results.json, results.md, the PNGs and report.html."""
    directory.mkdir(parents=True, exist_ok=True)
    report = ReportFiles(directory)
    report.files += write_results_csv(results, directory)
    json_path = directory / RESULTS_JSON
    json_path.write_text(results.model_dump_json(indent=1) + "\n")
    report.files.append(json_path)
    tables = report_tables(results)
    figures = report_figures(results)
    for figure in figures:
        path = directory / figure.name
        path.write_bytes(figure.png)
        report.files.append(path)
    markdown_path = directory / RESULTS_MD
    markdown_path.write_text(markdown(results, tables, figures))
    report.files.append(markdown_path)
    report.html.write_text(html_page(results, tables, figures))
    report.files.append(report.html)
    return report
