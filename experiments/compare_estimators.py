"""ΔBelief-RL against StarPO from one shared warm start, over several seeds, on held-out targets.

    python experiments/compare_estimators.py --out runs/curves --seeds 0,1,2

Steps (each skipped when its output is already complete, so an interrupted comparison resumes;
put a warm start you already have at OUT/data and OUT/sft/model to reuse it):
  1. ``deltabelief synth``  with the first preset's data section  -> OUT/data
  2. ``deltabelief sft``    once, shared by every run             -> OUT/sft/model
  3. with ``--calibrate``, ``deltabelief calibrate`` of the warm start with every template; the
     chosen one elicits the beliefs of every run, as in the pipeline   -> OUT/sft/calibration
  4. ``deltabelief train``  per (preset, seed) with train.seed     -> OUT/<preset>-seed<S>/metrics.jsonl
  5. ``deltabelief eval``   of the warm start and of every run's final model on every held-out
     Twenty Questions target at budgets 10/20/30                  -> OUT/sft/eval, OUT/<run>/eval
  6. with ``--calibrate``, ``deltabelief calibrate`` of the base model and of every run's final
     model with the chosen template                  -> OUT/base/calibration, OUT/<run>/calibration
Then it writes the training curves (OUT/curves.json, .png, .md: mean and std across seeds per
step, and each stage's share of an RL step's wall time) and the held-out comparison
(OUT/comparison.json, .md, .png): per preset, success at each budget, bits per question, the
share of questions that gain nothing, questions to solve and the repeat rate, as the mean over
seeds with a 95% t-interval over seeds, and each preset's success gain at budget 20 over the
warm start and over the second preset, and its change in each target's share of repeated
turns over the warm start, paired over targets (95% bootstrap). The presets default
to cpu (turn_grpo + ΔBelief reward), cpu-grpo (StarPO: trajectory-level GRPO, no belief reward)
and cpu-turn-rloo (the unbiased turn-level estimator + ΔBelief reward), which differ only in
their method keys. With ``--calibrate`` every run elicits its beliefs with the template the warm
start's calibration chose, as the pipeline does, and the script also writes OUT/beliefs.md: each
model's Spearman with the exact posterior and ECE under that template (mean and 95% t-interval
over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deltabelief.training.metrics import stage_shares

SUITE = "twenty_questions"
HEADLINE_BUDGET = 20
FIGURES = {  # held-out figure -> label; success@b are added per budget
    "bits_per_question": "bits / question",
    "zero_gain_share": "zero-gain share",
    "questions_to_solve": "questions to solve",
    "repeated_rate": "repeat rate",
}

CURVES = {  # metric -> label; rewards are left out: each preset's reward has different terms
    "rollout/success_rate": "success rate",
    "rollout/num_turns_mean": "mean questions per game",
    "rollout/repeated_rate": "repeated-question rate",
    "rollout/unanswerable_rate": "unanswerable-question rate",
    "belief/delta_mean": "mean ΔBelief per turn",
}


def deltabelief(*args: str, threads: int) -> None:
    """Run the CLI in a subprocess with ``threads`` torch threads; a failure stops the comparison."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "deltabelief.cli", *args]
    print("+", " ".join(command[2:]), flush=True)
    subprocess.run(command, env=env, check=True)


def finished_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def train(preset: str, seed: int, out: Path, num_steps: int, threads: int, template: str | None) -> Path:
    """One RL run from the shared warm start; ``template`` (None: the preset's) elicits its beliefs."""
    run_dir = out / f"{preset}-seed{seed}"
    if finished_steps(run_dir) < num_steps:
        resume = ["--resume"] if run_dir.exists() else []
        elicitation = ["--set", f"belief.template={json.dumps(template)}"] if template is not None else []
        deltabelief("train", "--config", preset, "--model", str(out / "sft" / "model"),
                    "--targets", str(out / "data" / "targets.parquet"), "--out", str(run_dir),
                    "--set", f"train.seed={seed}", "--set", f"train.num_steps={num_steps}", *elicitation, *resume,
                    threads=threads)
    return run_dir


def evaluate(preset: str, model: Path, out: Path, budgets: str, threads: int) -> Path:
    """Every held-out target of the noun game, twice each, at ``budgets`` (no belief curves: not compared)."""
    if not (out / "per_target.parquet").exists():
        deltabelief("eval", "--config", preset, "--model", str(model), "--suites", SUITE, "--budgets", budgets,
                    "--out", str(out), "--set", "eval.num_targets=0", "--set", "eval.belief_curves=false",
                    threads=threads)
    return out


def calibrate(preset: str, model: Path | None, data: Path, out: Path, template: str | None, threads: int):
    """Beliefs of ``model`` (None: the preset's base model) on the held-out teacher games of ``data``,
    under ``template`` (None: every template of the preset, one chosen); the CalibrationReport."""
    from deltabelief.calibration import load_report
    from deltabelief.calibration.report import REPORT_NAME

    if not (out / REPORT_NAME).exists():
        model_args = ["--model", str(model)] if model is not None else []
        template_args = ["--templates", template] if template is not None else []
        deltabelief("calibrate", "--config", preset, *model_args, *template_args,
                    "--trajectories", str(data / "trajectories.parquet"), "--out", str(out), threads=threads)
    return load_report(out)


def belief_figures(report, template: str) -> dict[str, float]:
    """Spearman with the exact posterior and ECE of ``template`` in a CalibrationReport."""
    scores = report.per_template[template]
    return {"spearman": float(scores["spearman"]), "ece": float(scores["ece"])}


def beliefs_table(base: dict, warm: dict, runs: dict[str, list[dict]], template: str) -> str:
    """Markdown: Spearman and ECE of the base model, the warm start and each preset (over seeds)."""
    lines = [f"Template: {template!r}", "", "| model | Spearman with the exact posterior | ECE |", "|---|---|---|",
             f"| base | {base['spearman']:.3f} | {base['ece']:.3f} |",
             f"| warm start | {warm['spearman']:.3f} | {warm['ece']:.3f} |"]
    for preset, figures in runs.items():
        cells = [_cell(seed_interval([f[name] for f in figures])) for name in ("spearman", "ece")]
        lines.append(f"| {preset} ({len(figures)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def eval_figures(eval_dir: Path) -> dict[str, float]:
    """success@b per budget, and the question-quality figures at the largest budget."""
    import pandas as pd

    summary = pd.read_parquet(eval_dir / "summary.parquet")
    summary = summary[summary.suite == SUITE].sort_values("budget")
    figures = {f"success@{int(row.budget)}": float(row.success_mean) for row in summary.itertuples()}
    last = summary.iloc[-1]
    figures["repeated_rate"] = float(last.repeated_rate)
    figures["questions_to_solve"] = float(last.turns_solved_mean)
    bits = pd.read_parquet(eval_dir / "information.parquet")
    bits = bits[bits.suite == SUITE]["bits"]
    figures["bits_per_question"] = float(bits.mean())
    figures["zero_gain_share"] = float((bits == 0).mean())
    return figures


def seed_interval(values: list[float], level: float = 0.95, rate: bool = False) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval for the mean over seeds (a single seed has no interval);
    a ``rate``'s interval is clipped to [0, 1]."""
    from scipy import stats

    values = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    if rate:
        return mean, max(0.0, mean - half), min(1.0, mean + half)
    return mean, mean - half, mean + half


def success_per_target(table) -> dict[str, float]:
    from deltabelief.gate import target_scores

    return target_scores(table, f"{SUITE}/success_mean")


def repeat_share_per_target(table) -> dict[str, float]:
    """Each target's share of repeated turns over all its games' turns."""
    rows = table[table.suite == SUITE]
    return {str(t): float(repeated / (turns * samples)) for t, repeated, turns, samples
            in zip(rows.target_id, rows.repeated_turns, rows.turns_mean, rows.samples)}


def paired_gain(runs: list[Path], reference: list[Path], score=success_per_target) -> tuple[float, float, float]:
    """Gain in ``score`` (success by default) at the headline budget, paired over targets: each target's
    value over its games in the runs (seeds) pooled on either side, then a 95% bootstrap interval over targets."""
    import pandas as pd

    from deltabelief.evaluation.metrics import per_target_table
    from deltabelief.gate import paired_differences, paired_interval

    def per_target(dirs: list[Path]) -> dict[str, float]:
        games = pd.concat([pd.read_parquet(d / "results.parquet") for d in dirs])
        return score(per_target_table(games[games.budget == HEADLINE_BUDGET]))  # the seeds' games pooled per target

    differences = paired_differences(per_target(runs), per_target(reference))
    low, high = paired_interval(differences, 0.95, 4000)
    return float(differences.mean()), low, high


def _is_rate(name: str) -> bool:
    return name.startswith("success@") or name in ("zero_gain_share", "repeated_rate")


def compare(evals: dict[str, list[Path]], warm_start: Path, budgets: list[int]) -> dict:
    """{preset: {figure: [mean, low, high]} plus gains} over seeds; see the module docstring."""
    baseline = list(evals)[1 % len(evals)]  # the second preset (StarPO by default)
    names = [f"success@{b}" for b in budgets] + list(FIGURES)
    out: dict = {"warm_start": eval_figures(warm_start), "presets": {}}
    for preset, dirs in evals.items():
        per_seed = [eval_figures(d) for d in dirs]
        row = {name: seed_interval([f[name] for f in per_seed], rate=_is_rate(name)) for name in names}
        row["gain_over_warm_start"] = paired_gain(dirs, [warm_start])
        row["gain_in_repeat_share_over_warm_start"] = paired_gain(dirs, [warm_start], repeat_share_per_target)
        if preset != baseline:
            row[f"gain_over_{baseline}"] = paired_gain(dirs, evals[baseline])
        row["seeds"] = len(dirs)
        out["presets"][preset] = row
    return out


def _cell(triple) -> str:
    mean, low, high = triple
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def comparison_table(result: dict, budgets: list[int]) -> str:
    names = [f"success@{b}" for b in budgets] + list(FIGURES)
    labels = [f"success @{b}" for b in budgets] + list(FIGURES.values())
    gains = sorted({k for row in result["presets"].values() for k in row if k.startswith("gain_")})
    head = "| preset | " + " | ".join(labels + [g.replace("_", " ") for g in gains]) + " |"
    lines = [head, "|---" * (1 + len(labels) + len(gains)) + "|"]
    warm = result["warm_start"]
    lines.append("| warm start | " + " | ".join(f"{warm[n]:.3f}" for n in names) + " |" + " |" * len(gains))
    for preset, row in result["presets"].items():
        cells = [_cell(row[n]) for n in names]
        cells += [(f"{row[g][0]:+.3f} [{row[g][1]:+.3f}, {row[g][2]:+.3f}]" if g in row else "") for g in gains]
        lines.append(f"| {preset} ({row['seeds']} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(result: dict, budgets: list[int], path: Path) -> None:
    """Interaction scaling: held-out success against the turn budget, mean and 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    warm = result["warm_start"]
    ax.plot(budgets, [warm[f"success@{b}"] for b in budgets], "k--", marker="s", label="warm start")
    for preset, row in result["presets"].items():
        means = [row[f"success@{b}"][0] for b in budgets]
        lows = [row[f"success@{b}"][1] for b in budgets]
        highs = [row[f"success@{b}"][2] for b in budgets]
        line, = ax.plot(budgets, means, marker="o", label=f"{preset} ({row['seeds']} seeds)")
        if not any(math.isnan(v) for v in lows):
            ax.fill_between(budgets, lows, highs, alpha=0.15, color=line.get_color())
    ax.set_xlabel("turn budget")
    ax.set_ylabel("held-out success")
    ax.set_xticks(budgets)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("held-out Twenty Questions: mean and 95% interval over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def summarise(histories: dict[str, list[list[dict]]]) -> dict:
    """{preset: {metric: {"mean": [...], "std": [...]}}} per step, std across seeds (ddof 0)."""
    out: dict = {}
    for preset, runs in histories.items():
        steps = min(len(h) for h in runs)
        out[preset] = {}
        for metric in CURVES:
            values = [[h[i].get(metric, float("nan")) for h in runs] for i in range(steps)]
            out[preset][metric] = {"mean": [statistics.fmean(v) for v in values],
                                   "std": [statistics.pstdev(v) for v in values]}
    return out


def plot(curves: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (metric, label) in zip(axes, CURVES.items()):
        for preset, series in curves.items():
            mean, std = series[metric]["mean"], series[metric]["std"]
            steps = range(1, len(mean) + 1)
            ax.plot(steps, mean, marker="o", label=preset)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set_xlabel("RL step")
        ax.set_title(label, fontsize=9)
    axes[0].legend()
    fig.suptitle(f"mean ± std over seeds {seeds}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TABLE = {"rollout/success_rate": "success", "rollout/num_turns_mean": "questions",
         "rollout/repeated_rate": "repeated", "belief/delta_mean": "ΔBelief"}


def table(curves: dict) -> str:
    """Markdown: per step and preset, the mean ± std across seeds of the TABLE metrics."""
    presets = list(curves)
    head = "| step | " + " | ".join(f"{p} {label}" for p in presets for label in TABLE.values()) + " |"
    rows = [head, "|---" * (1 + len(TABLE) * len(presets)) + "|"]
    steps = min(len(curves[p]["rollout/success_rate"]["mean"]) for p in presets)
    for i in range(steps):
        cells = [f"{curves[p][m]['mean'][i]:.2f} ± {curves[p][m]['std'][i]:.2f}" for p in presets for m in TABLE]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/curves"), help="output directory")
    parser.add_argument("--presets", default="cpu,cpu-grpo,cpu-turn-rloo",
                        help="presets to compare; gains are also reported over the second (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values (default: 0,1,2)")
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (default: 4, the cpu preset's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs at once, one torch thread each (default 1: two torch jobs on two "
                             "cores slow each other down more than they gain)")
    parser.add_argument("--budgets", default="10,20,30", help="held-out evaluation budgets (default: %(default)s)")
    parser.add_argument("--sft-epochs", type=int, default=0,
                        help="epochs of the shared warm start (default 0: the first preset's sft.epochs)")
    parser.add_argument("--calibrate", action="store_true",
                        help="calibrate the warm start first and elicit every run's beliefs with the template it "
                             "chooses (as the pipeline does; else each preset's belief.template), and measure the "
                             "beliefs (Spearman with the exact posterior, ECE) of the base model, the warm start "
                             "and every run's final model")
    args = parser.parse_args()
    presets = args.presets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)

    if not (out / "data" / "targets.parquet").exists():
        deltabelief("synth", "--config", presets[0], "--out", str(out / "data"), threads=threads * args.jobs)
    if not (out / "sft" / "model").exists():
        epochs = ["--set", f"sft.epochs={args.sft_epochs}"] if args.sft_epochs else []
        deltabelief("sft", "--config", presets[0], "--trajectories", str(out / "data" / "trajectories.parquet"),
                    "--out", str(out / "sft"), *epochs, threads=threads * args.jobs)
    warm_eval = evaluate(presets[0], out / "sft" / "model", out / "sft" / "eval", args.budgets, threads * args.jobs)
    warm, template = None, None
    if args.calibrate:
        warm = calibrate(presets[0], out / "sft" / "model", out / "data", out / "sft" / "calibration", None,
                         threads * args.jobs)
        template = warm.chosen_template
    runs = [(p, s) for s in seeds for p in presets]  # seed-major: a stopped comparison has whole seeds

    def train_and_evaluate(preset: str, seed: int) -> Path:
        run_dir = train(preset, seed, out, args.steps, threads, template)
        evaluate(preset, run_dir / "model", run_dir / "eval", args.budgets, threads)
        return run_dir

    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = list(pool.map(lambda ps: train_and_evaluate(*ps), runs))
    histories: dict[str, list[list[dict]]] = {p: [] for p in presets}
    evals: dict[str, list[Path]] = {p: [] for p in presets}
    for (preset, _), run_dir in zip(runs, dirs):
        histories[preset].append(read_history(run_dir)[: args.steps])
        evals[preset].append(run_dir / "eval")
    budgets = [int(b) for b in args.budgets.split(",")]
    result = compare(evals, warm_eval, budgets)
    held_out = comparison_table(result, budgets)
    (out / "comparison.json").write_text(json.dumps({"seeds": seeds, "steps": args.steps, **result}, indent=2))
    (out / "comparison.md").write_text(held_out)
    plot_comparison(result, budgets, out / "comparison.png")
    print(held_out)
    if args.calibrate:
        base = calibrate(presets[0], None, out / "data", out / "base" / "calibration", template, threads)
        runs_beliefs = {p: [belief_figures(calibrate(p, d.parent / "model", out / "data", d.parent / "calibration",
                                                      template, threads), template) for d in evals[p]]
                        for p in presets}
        beliefs = beliefs_table(belief_figures(base, template), belief_figures(warm, template), runs_beliefs, template)
        (out / "beliefs.md").write_text(beliefs)
        print(beliefs)
    curves = summarise(histories)
    shares = stage_shares([m for runs in histories.values() for h in runs for m in h])
    (out / "curves.json").write_text(json.dumps({"seeds": seeds, "steps": args.steps, "curves": curves,
                                                 "step_time_shares": shares}, indent=2))
    plot(curves, seeds, out / "curves.png")
    (out / "curves.md").write_text(table(curves))
    print(table(curves))
    print("share of an RL step's wall time:", ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(f"curves in {out}/curves.json, .png, .md; held-out comparison in {out}/comparison.json, .md, .png")


if __name__ == "__main__":
    main()
