"""An experiment's results: one summary per run (read from its run directory), the table beside the paper's
numbers (markdown and JSON), and the figures (learning curves against iterations and against CPU-seconds; the
waves of a trained wRNN)."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.io import atomic_write
from ..models.flops import flops_per_iteration
from .experiments import DIFFERENCES, Experiment, RunSpec
from .runner import run_dir

ARCH_LABEL = {"wrnn": "wRNN", "irnn": "iRNN", "wrnn-identity": "wRNN (identity init)"}


# --- one run -----------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    name: str
    arch: str
    seed: int
    seq: int | None
    status: str                     # "done", "partial" (budget not used up), "missing"
    steps: int = 0
    budget: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    flops_per_iter: float = 0.0
    solved_at: int | None = None
    solved_cpu_s: float | None = None
    final: dict = field(default_factory=dict)     # the last evaluation's val_* metrics
    best: dict = field(default_factory=dict)      # metrics at the best evaluation (test_* included)
    curve: list = field(default_factory=list)     # [step, cpu_s, val_loss, val_acc] per evaluation


def read_run(root: Path, spec: RunSpec) -> RunResult:
    from ..checkpoint import Checkpoint
    from ..core.errors import CheckpointError
    from ..tasks import task_from_state
    from .runner import is_complete

    path = run_dir(root, spec)
    res = RunResult(spec.name, spec.arch, spec.seed, spec.seq, "missing")
    try:
        ck = Checkpoint.load(path / "checkpoint.pt")
    except CheckpointError:
        return res
    cfg, p = ck.train_config, ck.progress
    res.status = "done" if is_complete(path, spec) else "partial"
    res.steps, res.wall_s, res.cpu_s = int(p.get("step", 0)), float(p.get("wall_s", 0)), float(p.get("cpu_s", 0))
    res.budget = cfg.steps
    task = task_from_state(ck.task)
    read_steps = 1 if task.readout == "last" else task.seq_len
    res.flops_per_iter = flops_per_iteration(ck.model_config, task.seq_len, read_steps, cfg.batch_size)
    res.solved_at = ck.solved_at
    res.best = {k: v for k, v in (ck.best or {}).items() if isinstance(v, (int, float))}
    log = path / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    for r in records:
        res.curve.append([r.get("step"), r.get("cpu_s"), r.get("val_loss"), r.get("val_acc")])
        if r.get("solved") and res.solved_cpu_s is None:
            res.solved_cpu_s = r.get("cpu_s")
    if records:
        res.final = {k: v for k, v in records[-1].items() if k.startswith("val_")}
    return res


# --- aggregation -------------------------------------------------------------------------------------------------------
def _median_range(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _fmt_num(v: float, kind: str) -> str:
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "pct":
        return f"{100 * v:.2f} %"
    if kind == "sci":
        return f"{v:.2e}"
    if kind == "s":
        return f"{v:.1f} s" if v < 10 else f"{v:,.0f} s" if v < 10_000 else f"{v / 3600:.1f} h"
    if kind == "gflop":
        return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"  # v in GFLOP
    return f"{v:.3g}"


def fmt_stat(values: list[float], kind: str, n_total: int | None = None) -> str:
    """``median [min–max]`` over seeds (just the value for one seed), with ``(k/n)`` when some seeds are missing."""
    mr = _median_range(values)
    if mr is None:
        return "—"
    med, lo, hi = mr
    s = _fmt_num(med, kind)
    if len(values) > 1 and _fmt_num(hi, kind) != _fmt_num(lo, kind):
        s += f" [{_fmt_num(lo, kind)}–{_fmt_num(hi, kind)}]"
    if n_total is not None and len(values) < n_total:
        s += f" ({len(values)}/{n_total} seeds)"
    return s


def _solve_cell(results: list[RunResult]) -> dict:
    solved = [r for r in results if r.solved_at is not None]
    unsolved = [r for r in results if r.solved_at is None and r.status == "done"]
    cell = {
        "seeds": len(results), "solved": len(solved),
        "iterations": [r.solved_at for r in solved],
        "cpu_s": [r.solved_cpu_s for r in solved if r.solved_cpu_s is not None],
        "gflop": [r.solved_at * r.flops_per_iter / 1e9 for r in solved],
        "cap": max((r.budget or 0) for r in results) if results else None,
        "unsolved_steps": [r.steps for r in unsolved],
        "unsolved_cpu_s": [r.cpu_s for r in unsolved],
        "pending": sum(r.status != "done" for r in results),
    }
    return cell


def _solve_text(cell: dict, what: str) -> str:
    n, k = cell["seeds"], cell["solved"]
    if n == 0:
        return "—"
    if k == 0:
        if cell["pending"]:
            return "running"
        return f"not solved within {cell['cap']:,}" if what == "iterations" else (
            fmt_stat(cell["unsolved_cpu_s"], "s") + " (cap)" if what == "cpu_s" else "—")
    vals = cell[what]
    kind = {"iterations": "int", "cpu_s": "s", "gflop": "gflop"}[what]
    s = fmt_stat(vals, kind)
    if k < n:
        s += f" ({k}/{n} solved" + (f", {cell['pending']} still running)" if cell["pending"] else ")")
    return s


def build_table(exp: Experiment, root: Path) -> dict:
    """The experiment's table as data: one entry per row, per arch, with every run's summary."""
    rows = []
    for row in exp.rows:
        entry = {"label": row.label, "seq": row.seq, "single_seed": row.single_seed, "archs": {}}
        for arch, specs in row.runs.items():
            results = [read_run(root, s) for s in specs]
            cell: dict = {"runs": [asdict(r) for r in results]}
            task = specs[0].task
            if task == "adding":
                cell.update(_solve_cell(results))
            done = [r for r in results if r.status != "missing"]
            cell["final_loss"] = [r.final.get("val_loss") for r in done if "val_loss" in r.final]
            cell["final_acc"] = [r.final.get("val_acc") for r in done if "val_acc" in r.final]
            cell["test_acc"] = [r.best.get("test_acc") for r in done if "test_acc" in r.best]
            cell["steps"] = [r.steps for r in done]
            cell["run_cpu_s"] = [r.cpu_s for r in done]
            cell["run_gflop"] = [r.steps * r.flops_per_iter / 1e9 for r in done]
            cell["gflop_per_iter"] = done[0].flops_per_iter / 1e9 if done else None
            cell["status"] = sorted({r.status for r in results})
            entry["archs"][arch] = cell
        rows.append(entry)
    return {"experiment": exp.name, "title": exp.title, "kind": exp.kind, "rows": rows, "paper": exp.paper}


# --- markdown ----------------------------------------------------------------------------------------------------------
def _lbl(arch: str) -> str:
    return ARCH_LABEL.get(arch, arch)


def _adding_md(exp: Experiment, table: dict) -> list[str]:
    a, b = exp.archs
    head = (f"| T | {_lbl(a)} iterations | {_lbl(a)} CPU-s | {_lbl(a)} GFLOP | {_lbl(b)} iterations | "
            f"{_lbl(b)} CPU-s | {_lbl(b)} GFLOP |")
    paper = exp.paper
    show_paper = any(paper.get(x) for x in exp.archs)
    if show_paper:
        head += f" paper {_lbl(a)} | paper {_lbl(b)} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in table["rows"]:
        cells = [row["label"].replace("T=", "") + (" ¹" if row["single_seed"] else "")]
        for arch in exp.archs:
            c = row["archs"][arch]
            cells += [_solve_text(c, "iterations"), _solve_text(c, "cpu_s"), _solve_text(c, "gflop")]
        if show_paper:
            for arch in exp.archs:
                v = paper.get(arch, {}).get(row["seq"], "—") if arch in paper else "—"
                cells.append("not within 60k" if v is None else (f"~{v:,}" if isinstance(v, int) else v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _final_md(exp: Experiment, table: dict) -> list[str]:
    a, b = exp.archs
    head = (f"| T | {_lbl(a)} loss | {_lbl(a)} recall | {_lbl(b)} loss | {_lbl(b)} recall | loss ratio | "
            f"iterations | CPU-s per run ({_lbl(a)} / {_lbl(b)}) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in table["rows"]:
        ca, cb = row["archs"][a], row["archs"][b]
        ratio = "—"
        if ca["final_loss"] and cb["final_loss"]:
            ma, mb = statistics.median(ca["final_loss"]), statistics.median(cb["final_loss"])
            if ma > 0 and mb > 0:
                ratio = f"{mb / ma:.3g}× ({math.log10(mb / ma):.1f} orders)"
        its = fmt_stat(ca["steps"], "int")
        if any(st != "done" for st in ca["status"] + cb["status"]):
            budget = max((r["budget"] or 0) for r in ca["runs"] + cb["runs"])
            lines.append(f"| {row['label'].replace('T=', '')}{' ¹' if row['single_seed'] else ''} | unfinished: "
                         f"{its} of {budget:,} iterations so far (re-run to resume) | | | | | | |")
            continue
        lines.append(f"| {row['label'].replace('T=', '')}{' ¹' if row['single_seed'] else ''} | "
                     f"{fmt_stat(ca['final_loss'], 'sci')} | {fmt_stat(ca['final_acc'], 'pct')} | "
                     f"{fmt_stat(cb['final_loss'], 'sci')} | {fmt_stat(cb['final_acc'], 'pct')} | {ratio} | {its} | "
                     f"{fmt_stat(ca['run_cpu_s'], 's')} / {fmt_stat(cb['run_cpu_s'], 's')} |")
    return lines


def _ablation_md(exp: Experiment, table: dict) -> list[str]:
    a, b = exp.archs
    head = f"| task | metric | {_lbl(a)} | {_lbl(b)} |"
    lines = [head, "|---|---|---|---|"]
    for row in table["rows"]:
        ca, cb = row["archs"][a], row["archs"][b]
        # the footnote's mark on the cell that has one seed (at cpu scale the identity wRNN's adding row)
        ma, mb = ((" ¹" if row["single_seed"] and len(c["runs"]) == 1 else "") for c in (ca, cb))
        if row["label"].startswith("adding"):
            lines.append(f"| {row['label']} | iterations to MSE ≤ 0.05 | {_solve_text(ca, 'iterations')}{ma} | "
                         f"{_solve_text(cb, 'iterations')}{mb} |")
        else:
            lines.append(f"| {row['label']} | final loss | {fmt_stat(ca['final_loss'], 'sci')} | "
                         f"{fmt_stat(cb['final_loss'], 'sci')} |")
            lines.append(f"| {row['label']} | recall | {fmt_stat(ca['final_acc'], 'pct')} | "
                         f"{fmt_stat(cb['final_acc'], 'pct')} |")
    return lines


def _accuracy_md(exp: Experiment, table: dict) -> list[str]:
    lines = ["| arch | test accuracy | iterations (epochs) | CPU time | GFLOP | paper |", "|---|---|---|---|---|---|"]
    row = table["rows"][0]
    for arch in exp.archs:
        c = row["archs"][arch]
        runs = [r for r in c["runs"] if r["status"] != "missing"]
        epochs = ""
        if runs:
            epochs = f" ({runs[0]['steps'] / 445.3:.1f})" if exp.task in ("psmnist", "smnist") else ""
        paper = exp.paper.get(arch)
        lines.append(f"| {_lbl(arch)}{' ¹' if row['single_seed'] else ''} | {fmt_stat(c['test_acc'], 'pct')} | "
                     f"{fmt_stat(c['steps'], 'int')}{epochs} | {fmt_stat(c['run_cpu_s'], 's')} | "
                     f"{fmt_stat(c['run_gflop'], 'gflop')} | "
                     f"{f'{100 * paper:.1f} %' if paper else '—'} |")
    return lines


def render_markdown(exp: Experiment, table: dict, scale: str, command: str, figures: list[str]) -> str:
    body = {"solve": _adding_md, "final": _final_md, "ablation": _ablation_md, "accuracy": _accuracy_md}[exp.kind]
    out = [f"## {exp.title}", "",
           f"Scale `{scale}`. Made by `{command}` on {time.strftime('%Y-%m-%d')}, "
           f"{platform.machine()} with {os.cpu_count()} CPU cores ({platform.processor() or platform.system()}), "
           "one thread per run. Values are the median over seeds with the range in brackets.", ""]
    out += body(exp, table)
    out.append("")
    if any(r["single_seed"] for r in table["rows"]):
        out.append(f"¹ one seed: at the cpu scale each run of this {'cell' if exp.kind == 'ablation' else 'row'} "
                   "takes more than ~15 minutes on 2 cores.")
    if exp.kind == "solve" and len(exp.archs) == 2:
        ratios = []
        for row in table["rows"]:
            ca, cb = (row["archs"][x] for x in exp.archs)
            if ca.get("iterations") and cb.get("cap"):
                ratios.append(f"{row['label']} {cb['cap'] / statistics.median(ca['iterations']):.0f}×")
        if ratios:
            out.append(f"{_lbl(exp.archs[1])} cap over {_lbl(exp.archs[0])}'s median iterations-to-solve: "
                       + ", ".join(ratios) + ".")
    if exp.kind == "final" and exp.paper.get("claim"):
        out.append(f"Paper: {exp.paper['claim']}.")
    pending = [r["name"] for row in table["rows"] for c in row["archs"].values() for r in c["runs"]
               if r["status"] != "done"]
    if pending:
        out.append(f"Not finished (re-run the command to resume): {', '.join(sorted(set(pending)))}.")
    out += [""] + [f"- {n}" for n in exp.notes] + [f"- {d}" for d in DIFFERENCES if _relevant(d, exp)]
    for f in figures:
        out += ["", f"![{exp.name}]({f})"]
    return "\n".join(out).rstrip() + "\n"


def _relevant(diff: str, exp: Experiment) -> bool:
    if diff.startswith("Our copy"):
        return "copy" in exp.task
    if diff.startswith("`solved_at`"):
        return "adding" in exp.task
    if diff.startswith("Our conv bias"):
        return any(a.startswith("wrnn") for a in exp.archs)
    return True


# --- figures -----------------------------------------------------------------------------------------------------------
COLORS = {"wrnn": "#d1495b", "irnn": "#00798c", "wrnn-identity": "#edae49"}


def curves_figure(exp: Experiment, table: dict, path: Path) -> Path:
    """Held-out loss (accuracy for image tasks) per row: against iterations (top) and CPU-seconds (bottom)."""
    from ..plot.figures import new_figure, save_figure

    rows = table["rows"]
    n = len(rows)
    fig = new_figure((min(420 * n + 120, 2000), 640), 110)
    axes = fig.subplots(2, n, squeeze=False)
    acc = exp.kind == "accuracy"
    col = 3 if acc else 2
    for j, row in enumerate(rows):
        for i, xcol in enumerate((0, 1)):
            ax = axes[i][j]
            for arch, c in row["archs"].items():
                for k, r in enumerate(c["runs"]):
                    pts = [(p[xcol], p[col]) for p in r["curve"] if p[xcol] is not None and p[col] is not None]
                    if not pts:
                        continue
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, color=COLORS.get(arch, None), lw=1.4, alpha=0.9 if k == 0 else 0.55,
                            label=_lbl(arch) if k == 0 else None)
            if not acc:
                ax.set_yscale("log")
            if exp.kind in ("solve",) or row["label"].startswith("adding"):
                ax.axhline(0.05, color="#555555", ls="--", lw=1)
            ax.grid(True, alpha=0.3)
            ax.set_xlabel("iteration" if xcol == 0 else "CPU-seconds", fontsize=9)
            if j == 0:
                ax.set_ylabel(("validation accuracy" if acc else "held-out loss"), fontsize=9)
            if i == 0:
                ax.set_title(row["label"] or exp.task, fontsize=10, loc="left")
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(exp.title, fontsize=11)
    return save_figure(fig, path, 110)


def waves_of(exp: Experiment, root: Path, path: Path) -> Path | None:
    """The hidden state of the first trained wRNN of the experiment on held-out sequence 0."""
    from ..plot.figures import save_figure, waves_figure
    from ..plot.waves import channel_speeds, input_events, open_source, task_sequence

    for spec in exp.runs():
        best = run_dir(root, spec) / "best.pt"
        if spec.arch == "wrnn" and best.is_file():
            src = open_source(best)
            xs = task_sequence(src, 0)
            states = src.states(xs)
            chans = list(range(min(3, states.shape[1])))
            speeds = channel_speeds(states)
            fig = waves_figure(states, xs, chans, layout=src.layout, events=input_events(src.task.name, xs),
                               speeds={c: speeds[c] for c in chans}, task_name=src.task.name,
                               title=f"trained {spec.name}: hidden state on held-out sequence 0")
            return save_figure(fig, path, 110)
    return None


def write_report(exp: Experiment, root: Path, scale: str, command: str, figures: bool = True) -> dict:
    """results.json, results.md and the figures in ``root/<experiment>/``; returns the table."""
    from ..core.errors import PlotError

    out = Path(root) / exp.name
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(exp, root)
    made, note = [], None
    if figures:
        try:
            made.append(curves_figure(exp, table, out / "curves.png").name)
            w = waves_of(exp, root, out / "waves.png")
            if w is not None:
                made.append(w.name)
        except PlotError as e:
            note = f"figures skipped: {e}"
    table.update(scale=scale, command=command, date=time.strftime("%Y-%m-%d"), figures=made,
                 machine={"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()})
    md = render_markdown(exp, table, scale, command, made)
    if note:
        md += f"\n({note})\n"
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(table, indent=1)))
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(md))
    table["markdown"] = md
    return table
