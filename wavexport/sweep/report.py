"""A sweep's outcome: one row per trial, the best trial and its setting, and the heat map of the objective over
the grid (lr x gradient clip when both are swept)."""
from __future__ import annotations

import math
from pathlib import Path

from ..core.text import fmt_duration
from .spec import SweepError, SweepSpec, fmt_value, fmt_params


def trial_rows(study, spec: SweepSpec) -> list[dict]:
    """Every trial of the study, in order: number, state, params, value, what explains it, and a note (re-run,
    pruned, diverged, error)."""
    trials = study.get_trials(deepcopy=False)
    again = {}  # a trial failed by a lost worker or an interrupt -> the trial that re-ran it
    for t in trials:
        hist = t.system_attrs.get("retry_history") or []
        if hist:
            again[hist[-1]] = t.number
    rows = []
    for t in trials:
        a = t.user_attrs
        state = t.state.name
        note = ""
        if state == "FAIL":
            if t.number in again:
                cause = "interrupted" if a.get("ended") == "interrupted" else "worker lost"
                note = f"{cause}; run again as trial {again[t.number]}"
            else:
                note = a.get("error") or "failed"
        elif state == "PRUNED":
            note = f"pruned at step {a.get('steps', '?')}"
        elif a.get("diverged"):
            note = "diverged"
        retried = t.system_attrs.get("failed_trial")
        if retried is not None and state != "FAIL":
            note = (note + "; " if note else "") + f"re-run of trial {t.system_attrs['retry_history'][-1]}"
        rows.append({"number": t.number, "state": state, "params": dict(t.params), "value": t.value,
                     "steps": a.get("steps"), "solved_at": a.get("solved_at"), "wall_s": a.get("wall_s"),
                     "val_loss": a.get("val_loss"), "val_acc": a.get("val_acc"), "test_acc": a.get("test_acc"),
                     "run_dir": a.get("run_dir"), "worker": a.get("worker"), "note": note})
    return rows


def best_row(rows: list[dict], spec: SweepSpec) -> dict | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None and math.isfinite(r["value"])]
    if not done:
        return None
    if spec.obj.minimize:
        return min(done, key=lambda r: (r["value"], r["number"]))
    return min(done, key=lambda r: (-r["value"], r["number"]))  # the first trial among equals


def summary(rows: list[dict]) -> dict:
    count = {}
    for r in rows:
        count[r["state"]] = count.get(r["state"], 0) + 1
    return count


def _value_text(r: dict, spec: SweepSpec) -> str:
    v = r["value"]
    if r["state"] == "PRUNED":
        return f"> {r['steps']}" if spec.objective == "steps_to_solve" and r.get("steps") is not None else "pruned"
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "inf"
    if spec.objective == "steps_to_solve":
        return f"{v:.0f}" if r.get("solved_at") is not None else f"{v:.0f} (unsolved)"
    return f"{v:.4f}"


def format_table(rows: list[dict], spec: SweepSpec) -> str:
    params = spec.params
    head = ["trial", "state", *params, spec.objective, "steps", "wall", "run / note"]
    body = []
    for r in rows:
        where = r["run_dir"] or ""
        if r["note"]:
            where = f"{where}  ({r['note']})" if where else r["note"]
        body.append([str(r["number"]), r["state"], *[fmt_value(r["params"].get(p, "-")) for p in params],
                     _value_text(r, spec), "-" if r["steps"] is None else str(r["steps"]), fmt_duration(r["wall_s"]),
                     where])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])) + "  " + cells[-1]
    return "\n".join([line(head), *(line(b) for b in body)])


def best_line(rows: list[dict], spec: SweepSpec, root: Path | None = None) -> str:
    b = best_row(rows, spec)
    if b is None:
        return "best: none yet (no trial has completed with a finite value)"
    extra = []
    if spec.objective == "steps_to_solve":
        extra.append(f"solved at step {b['solved_at']}" if b["solved_at"] is not None else "unsolved")
    if b.get("test_acc") is not None:
        extra.append(f"test_acc {b['test_acc']:.4f}")
    if b.get("wall_s") is not None:
        extra.append(f"{fmt_duration(b['wall_s'])} of training")
    run = b["run_dir"]
    if run and root is not None:
        run = str(Path(root) / run)
    return (f"best: trial {b['number']} ({fmt_params(b['params'])}): {spec.objective} {_value_text(b, spec)}"
            f"{' (' + ', '.join(extra) + ')' if extra else ''} | {run}")


def heat_axes(spec: SweepSpec) -> tuple[str | None, str | None]:
    """(y, x) of the heat map: lr over grad_clip when both are swept, else the first two swept parameters."""
    params = spec.params
    if "lr" in params and "grad_clip" in params:
        return "lr", "grad_clip"
    if len(params) >= 2:
        return params[0], params[1]
    return (params[0], None) if params else (None, None)


def plot_heatmap(rows: list[dict], spec: SweepSpec, path, title: str | None = None) -> Path:
    """The objective over the two swept axes (:func:`heat_axes`), the best over any other swept parameter; each
    cell names its value (``> N`` pruned, ``unsolved``, ``fail``). A search over ranges is drawn as points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepError("the heat map needs matplotlib: pip install 'wavexport[plot]', or pass --no-plot") from None
    import numpy as np

    ykey, xkey = heat_axes(spec)
    if ykey is None:
        raise SweepError("nothing swept: no heat map to draw")
    minimize = spec.obj.minimize
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * max(1, len(spec.grid.get(xkey, [0, 0, 0, 0]))),
                                    1.4 + 0.8 * max(1, len(spec.grid.get(ykey, [0, 0, 0, 0])))))
    if ykey in spec.grid and (xkey is None or xkey in spec.grid):
        ys = list(spec.grid[ykey])
        xs = list(spec.grid[xkey]) if xkey else [None]
        grid = np.full((len(ys), len(xs)), np.nan)
        text = [["" for _ in xs] for _ in ys]
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                cell = [r for r in rows
                        if r["params"].get(ykey) == yv and (xkey is None or r["params"].get(xkey) == xv)]
                vals = [r for r in cell if r in done and math.isfinite(r["value"])]
                if vals:
                    b = (min if minimize else max)(vals, key=lambda r: r["value"])
                    grid[i, j] = b["value"]
                    text[i][j] = _value_text(b, spec).replace(" (unsolved)", "\nunsolved")
                elif any(r["state"] == "PRUNED" for r in cell):
                    text[i][j] = _value_text(next(r for r in cell if r["state"] == "PRUNED"), spec)
                elif any(r in done for r in cell):
                    text[i][j] = "diverged"
                elif any(r["state"] == "FAIL" for r in cell) and not any(r["state"] in ("RUNNING", "WAITING")
                                                                        for r in cell):
                    text[i][j] = "fail"
                else:
                    text[i][j] = "..."
        cmap = plt.get_cmap("viridis_r" if minimize else "viridis").with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        fig.colorbar(im, ax=ax, label=spec.objective)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(ys)):
            for j in range(len(xs)):
                dark = np.isfinite(grid[i, j]) and ((grid[i, j] > mid) == minimize)
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_yticks(range(len(ys)), [fmt_value(v) for v in ys])
        ax.set_xticks(range(len(xs)), [fmt_value(v) if v is not None else "" for v in xs])
    else:  # ranges: one point per trial
        pts = [r for r in done if math.isfinite(r["value"])]
        xv = [r["params"].get(xkey, 0) if xkey else 0 for r in pts]
        yv = [r["params"].get(ykey) for r in pts]
        sc = ax.scatter(xv, yv, c=[r["value"] for r in pts], cmap="viridis_r" if minimize else "viridis")
        fig.colorbar(sc, ax=ax, label=spec.objective)
        for name, setter in ((ykey, ax.set_yscale), (xkey, ax.set_xscale)):
            if name in spec.ranges and spec.range_specs[name].log:
                setter("log")
    ax.set_ylabel(ykey)
    ax.set_xlabel(xkey or "")
    b = best_row(rows, spec)
    ax.set_title(title or f"{spec.task}/{spec.arch}: {spec.objective}"
                 + (f"\nbest {fmt_params(b['params'])}" if b else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    from ..core.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def sweep_report(study, spec: SweepSpec, root: Path | None = None) -> str:
    """The table, a count of trials by state, and the best line: what ``wavexport sweep report`` prints."""
    rows = trial_rows(study, spec)
    counts = summary(rows)
    head = (f"sweep {study.study_name}: {spec.describe()}\n"
            f"trials: {', '.join(f'{n} {s.lower()}' for s, n in sorted(counts.items()))}")
    return "\n".join([head, "", format_table(rows, spec), "", best_line(rows, spec, root)])


__all__ = ["best_line", "best_row", "format_table", "heat_axes", "plot_heatmap", "summary", "sweep_report",
           "trial_rows"]
