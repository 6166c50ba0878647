"""The notebooks execute on smoke settings, and every figure they draw is readable.

Each notebook (jupytext py:percent) is converted to ipynb in memory and executed by nbclient
in a fresh ``python3`` kernel of this interpreter, with ``OPTZOO_SMOKE=1``,
``MPLBACKEND=Agg`` and a temporary working directory (so nothing is written into the
repository). The kernel imports ``optzoo`` as installed (``pip install -e`` in the test
environment) and ``experiments`` from the checkout (``PYTHONPATH`` = the repository root: the
harness is not in the wheel and runs from a checkout, as Flax's examples do).

**How figures are checked.** Two cells are added around the notebook's own cells: the first
defines :func:`figure_problems` (the readability rule below) in the kernel and wraps
``plt.show`` and ``Figure.savefig`` so that every figure is checked at the moment the
notebook displays or saves it (``plt.show`` then closes it, as the inline backend would);
the last cell checks the figures still open and prints how many were checked. A figure that
breaks the rule raises in the very cell that drew it, naming the figure, the axes and what is
missing; a notebook that draws fewer figures than expected fails too. The rule is tested on
its own (good and bad figures) so that it can fail. This hooks matplotlib itself rather than
relying on each notebook to call a helper, so a new plot cannot escape it.

The rule, per visible Axes: an x label and a y label (colorbars: a label on their long
axis), a title on the axes or the figure, a legend (axes or figure) when any series carries
a label, and a legend whenever the axes draws two or more series (lines, bar/errorbar
containers, scatter collections). Units cannot be checked mechanically; the notebooks write
them in the labels.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel", reason="the notebooks extra (pip install -e .[notebooks])")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"

# notebook -> the least number of figures its smoke run draws
NOTEBOOKS = {
    "orthogonalizers": 4,
    "equivariance_tour": 4,
    "routing_report": 1,
    "results_explorer": 4,
}
# notebook -> the committed results it reads by default (no smoke switch: they are small)
READS_COMMITTED = {"results_explorer": REPO / "experiments/results/ablation"}
# Per-cell limit: generous against a loaded 2-core machine (a smoke cell takes < 15 s).
CELL_TIMEOUT_S = 300
MARKER = "OPTZOO_FIGURES_CHECKED="


def figure_problems(fig) -> list[str]:
    """What makes ``fig`` unreadable (empty list: nothing). Runs in the kernel too."""
    from matplotlib.collections import PathCollection

    def flat(items):
        for item in items:
            if isinstance(item, (tuple, list)):
                yield from flat(item)
            elif item is not None:
                yield item

    problems = []
    sup = fig._suptitle.get_text().strip() if fig._suptitle is not None else ""
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        cbar = getattr(ax, "_colorbar", None)
        if cbar is not None:
            label = ax.get_ylabel() if cbar.orientation == "vertical" else ax.get_xlabel()
            if not label.strip():
                problems.append(f"axes {i}: colorbar without a label")
            continue
        where = f"axes {i} ({ax.get_title() or sup or 'untitled'!r})"
        if not ax.get_xlabel().strip():
            problems.append(f"{where}: no x label")
        if not ax.get_ylabel().strip():
            problems.append(f"{where}: no y label")
        if not (ax.get_title().strip() or sup):
            problems.append(f"{where}: no title on the axes or the figure")
        has_legend = ax.get_legend() is not None or bool(fig.legends)
        handles, _ = ax.get_legend_handles_labels()
        if handles and not has_legend:
            problems.append(f"{where}: labelled series but no legend")
        in_containers = {id(a) for c in ax.containers for a in flat(c)}
        series = (
            len(ax.containers)
            + sum(1 for line in ax.lines if id(line) not in in_containers)
            + sum(
                1
                for c in ax.collections
                if isinstance(c, PathCollection) and id(c) not in in_containers
            )
        )
        if series >= 2 and not has_legend:
            problems.append(f"{where}: {series} series without a legend")
    return problems


_HOOK = textwrap.dedent("""
    import matplotlib.pyplot as _optzoo_plt
    from matplotlib.figure import Figure as _OptzooFigure

    _OPTZOO_CHECKED = []

    def _optzoo_check(fig):
        problems = figure_problems(fig)
        if problems:
            raise AssertionError(f"unreadable figure {fig.number}: " + "; ".join(problems))
        if id(fig) not in _OPTZOO_CHECKED:
            _OPTZOO_CHECKED.append(id(fig))

    def _optzoo_show(*args, **kwargs):
        for num in _optzoo_plt.get_fignums():
            _optzoo_check(_optzoo_plt.figure(num))
        _optzoo_plt.close("all")

    _optzoo_savefig = _OptzooFigure.savefig

    def _optzoo_checked_savefig(self, *args, **kwargs):
        _optzoo_check(self)
        return _optzoo_savefig(self, *args, **kwargs)

    _optzoo_plt.show = _optzoo_show
    _OptzooFigure.savefig = _optzoo_checked_savefig
""")

_FINAL = textwrap.dedent(f'''
    for _num in _optzoo_plt.get_fignums():
        _optzoo_check(_optzoo_plt.figure(_num))
    print("{MARKER}" + str(len(_OPTZOO_CHECKED)))
''')


def _execute(
    name: str, workdir: Path, monkeypatch, env: dict[str, str] | None = None
) -> tuple[object, int]:
    nb = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    hook = inspect.getsource(figure_problems) + _HOOK
    nb.cells.insert(0, nbformat.v4.new_code_cell(hook))
    nb.cells.append(nbformat.v4.new_code_cell(_FINAL))
    monkeypatch.setenv("OPTZOO_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("OPTZOO_RESULTS", raising=False)
    # the harness runs from a checkout; optzoo is the installed package
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, str(workdir / f"{name}.executed.ipynb"))  # for debugging
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert MARKER in text, text
    return nb, int(text.split(MARKER)[1].split()[0])


# ------------------------------------------------------------------------ the notebooks
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_executes_on_smoke_settings(name, tmp_path, monkeypatch):
    nb, checked = _execute(name, tmp_path, monkeypatch)
    assert checked >= NOTEBOOKS[name], f"{name}: only {checked} figures drawn and checked"
    if name in READS_COMMITTED:  # it opened the committed results, and says which
        text = _outputs(nb)
        assert f"reading {READS_COMMITTED[name]}" in text, text
        assert "synthetic" not in text.lower(), text


def _outputs(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_results_explorer_loads_a_run_directory(tmp_path, monkeypatch):
    # A run directory in experiments.train's format (metrics.jsonl train/eval records with
    # per-group and router metrics, a torn last line as after a crash, summary.json), given
    # through OPTZOO_RESULTS: the explorer must read it instead of the committed ablation.
    run = tmp_path / "my_run"
    run.mkdir()
    lines = []
    for step in range(0, 41, 10):
        if step:
            lines.append(
                json.dumps(
                    {
                        "kind": "train",
                        "step": step,
                        "tokens": 64 * step,
                        "loss": 5.0 / step,
                        "lr": 1e-3,
                        "grad_norm": 1.0,
                        "grad_norm/mlp": 0.5,
                        "grad_norm/attention": 0.4,
                        "router/load_cv": 0.3,
                        "router/0/load_cv": 0.3,
                    }
                )
            )
        lines.append(
            json.dumps(
                {"kind": "eval", "step": step, "tokens": 64 * step, "val_loss": 5.0 / (step + 1)}
            )
        )
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "tra')
    (run / "summary.json").write_text(json.dumps({"final_val_loss": 5.0 / 41, "steps": 40}))
    nb, checked = _execute(
        "results_explorer", tmp_path, monkeypatch, env={"OPTZOO_RESULTS": str(run)}
    )
    text = _outputs(nb)
    assert f"{run}: run" in text and "synthetic" not in text, text
    assert checked >= 2  # losses + the grad_norm/router families


def test_notebooks_are_percent_scripts_with_a_header_and_a_smoke_flag():
    found = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.py"))
    assert found == sorted(NOTEBOOKS), "a notebook without a test entry (or a stale entry)"
    for name in NOTEBOOKS:
        text = (NOTEBOOK_DIR / f"{name}.py").read_text()
        assert "format_name: percent" in text, name
        nb = jupytext.reads(text, fmt="py:percent")
        assert nb.cells[0].cell_type == "markdown", f"{name}: first cell must explain it"
        assert nb.cells[0].source.lstrip().startswith("# "), f"{name}: header needs a title"
        assert sum(c.cell_type == "code" for c in nb.cells) >= 3, name
        if name not in READS_COMMITTED:
            assert 'os.environ.get("OPTZOO_SMOKE"' in text, f"{name}: no smoke switch"
        else:
            assert "experiments/results/" in nb.cells[0].source, f"{name}: say what it reads"
        assert "savefig" not in text, f"{name}: notebooks display figures, they save nothing"
        assert "sys.path" not in text, f"{name}: import the installed package, no path bootstrap"


# ------------------------------------------------------------------- the figure rule
def _fig():
    from matplotlib.figure import Figure

    fig = Figure()
    return fig, fig.add_subplot()


def test_figure_rule_accepts_a_readable_figure():
    fig, ax = _fig()
    ax.plot([1, 2], [3, 4], label="a")
    ax.errorbar([1, 2], [2, 3], yerr=[0.1, 0.1], label="b")  # its cap lines are one series
    ax.set(xlabel="step", ylabel="loss (nats)", title="t")
    ax.legend()
    im = fig.add_subplot(2, 1, 2).imshow([[0, 1], [1, 0]])
    im.axes.set(xlabel="j", ylabel="i", title="heat")
    fig.colorbar(im, ax=im.axes).set_label("value (units)")
    assert figure_problems(fig) == []


@pytest.mark.parametrize("defect", ["xlabel", "ylabel", "title", "legend", "series", "cbar"])
def test_figure_rule_rejects_each_defect(defect):
    fig, ax = _fig()
    ax.plot([1, 2], [3, 4], label=None if defect == "series" else "a")
    if defect == "series":
        ax.plot([1, 2], [4, 3])
    ax.set(
        xlabel="" if defect == "xlabel" else "x (s)",
        ylabel="" if defect == "ylabel" else "y (m)",
        title="" if defect == "title" else "t",
    )
    if defect not in ("legend", "series"):
        ax.legend()
    if defect == "cbar":
        fig.colorbar(ax.imshow([[0, 1], [1, 0]]), ax=ax)
    problems = figure_problems(fig)
    want = {
        "xlabel": "no x label",
        "ylabel": "no y label",
        "title": "no title",
        "legend": "no legend",
        "series": "2 series without a legend",
        "cbar": "colorbar without a label",
    }[defect]
    assert len(problems) == 1 and want in problems[0], problems
