"""The ``deltabelief`` command: one subcommand per stage.

Every stage takes ``--config PRESET`` (a name in configs/ or a YAML path) and
``--set section.key=value`` overrides checked against the typed config, so the
same settings drive the CLI, Python and Flyte. Heavy libraries are imported
inside the handlers so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from deltabelief.config import Config, load_config
from deltabelief.training.resume_hint import how_to_resume
from deltabelief.user_errors import Interrupted, run_command

log = logging.getLogger("deltabelief")


def _config(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    return load_config(args.config, [*args.set, *extra])


def _add_config_args(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    parser.add_argument(
        "--config",
        default=default,
        help=f"preset name in configs/ or a YAML path (default: {default})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set train.num_steps=5 (repeatable; checked against the typed config)",
    )


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _done(message: str) -> None:
    """Every command ends with one line saying where its outputs went."""
    print(message)


# ---------------------------------------------------------------- play / judge


def cmd_play(args: argparse.Namespace) -> int:
    from deltabelief.policy.policy import Policy
    from deltabelief.rollout import rollout
    from deltabelief.games.base import build_game
    from deltabelief.session import build_judge, build_target

    overrides = [f"policy.model={args.model}"] if args.model else []
    overrides += [f"judge.backend={args.judge}"] if args.judge else []
    config = _config(args, overrides)
    game = build_game(config.game)
    judge = build_judge(config.judge, config.game)
    policy = Policy.from_config(config.policy, seed=args.seed)
    target = build_target(config.game.task, args.target)
    (trajectory,) = rollout(
        policy, game, judge, [target], n_per_target=1, seed=args.seed, eval_mode=args.eval_mode, progress=False
    )
    print(f"secret: {args.target}   (judge: {config.judge.backend}, model: {config.policy.model})")
    for t, turn in enumerate(trajectory.turns, start=1):
        print(f"{t:2d}. Q: {turn.move!r}")
        print(f"    A: {turn.answer}  [{turn.status}]")
    outcome = "solved" if trajectory.solved else "not solved"
    _done(f"{outcome} in {trajectory.num_turns} turns")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from deltabelief.games import play_moves
    from deltabelief.games.base import build_game
    from deltabelief.session import build_judge, build_target

    overrides = [f"judge.backend={args.judge}"] if args.judge else []
    config = _config(args, overrides)
    game = build_game(config.game)
    judge = build_judge(config.judge, config.game)
    state = game.new_state(build_target(config.game.task, args.target))
    earlier = [q for q in args.history.split("|") if q.strip()] if args.history else []
    for question in earlier:  # replay earlier questions so repeats are detected
        play_moves(game, judge, [state], [question])
        if state.done:
            raise SystemExit(f"the game ended during --history at {question!r}; nothing left to judge")
    (result,) = play_moves(game, judge, [state], [args.question])
    print(result.text)
    print(result.status)
    return 0


# ---------------------------------------------------------------- data


def cmd_synth(args: argparse.Namespace) -> int:
    from deltabelief.synthesis import synthesize

    overrides = [f"data.source={args.source}"] if args.source else []
    overrides += [f"data.task={args.task}"] if args.task else []
    overrides += [f"data.seed={args.seed}"] if args.seed is not None else []
    overrides += [f"data.split=[{args.split}]"] if args.split else []
    overrides += [f"data.teacher={args.teacher}"] if args.teacher else []
    overrides += [f"data.num_games={args.games}"] if args.games is not None else []
    overrides += ["data.only_solved=true"] if args.only_solved else []
    config = _config(args, overrides)
    result = synthesize(config.data, config.game, Path(args.out))  # a SynthesisError leaves the folder as it was
    for line in result.summary_lines():
        print(line)
    paths = [str(p) for p in (result.targets_path, result.trajectories_path, result.report_path) if p]
    _done(f"wrote {', '.join(paths)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from deltabelief.data.contracts import ContractError, format_report, report_path_for, validate_dataset

    try:
        frame = validate_dataset(args.kind, Path(args.path))
    except ContractError as err:
        print(format_report(err.report))
        return 1
    _done(f"{args.path}: {len(frame)} rows hold the '{args.kind}' contract (report: {report_path_for(args.path)})")
    return 0


# ---------------------------------------------------------------- training


def cmd_sft(args: argparse.Namespace) -> int:
    from deltabelief.training.sft import warm_start

    config = _config(args)
    out = warm_start(config, Path(args.trajectories), Path(args.out))
    _done(f"warm-started model saved to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from deltabelief.training.rl import run_rl

    overrides = [f"estimator.name={args.estimator}"] if args.estimator else []
    overrides += [f"policy.model={args.model}"] if args.model else []
    config = _config(args, overrides)
    try:
        result = run_rl(config, args.targets, Path(args.out), resume=args.resume)
    except KeyboardInterrupt as err:
        raise Interrupted(how_to_resume(Path(args.out), args.argv)) from err
    _done(f"trained model and checkpoints in {result.output_dir}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from deltabelief.calibration import calibrate

    overrides = [f"calibration.templates={json.dumps(args.templates.split(','))}"] if args.templates else []
    overrides += [f"policy.model={args.model}"] if args.model else []
    config = _config(args, overrides)
    report = calibrate(config, Path(args.trajectories), Path(args.out))
    print(f"chosen template: {report.chosen_template!r} ({report.criterion})")
    _done(f"calibration report in {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deltabelief.evaluation import evaluate_model

    overrides = [f"policy.model={args.model}"] if args.model else []
    overrides += [f"eval.suites={json.dumps(args.suites.split(','))}"] if args.suites else []
    overrides += [f"eval.k={args.k}"] if args.k else []
    overrides += [f"eval.budgets=[{args.budgets}]"] if args.budgets else []
    overrides += [f"eval.judge.backend={args.judge}"] if args.judge else []
    config = _config(args, overrides)
    result = evaluate_model(config, Path(args.out))
    for name, value in sorted(result.metrics.items()):
        print(f"{name:45s} {value:.4f}")
    _done(f"evaluation report: {result.report_path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deltabelief.serving.openai_server import API_KEY_ENV, ServeLimits, serve

    limits = ServeLimits(max_queue=args.max_queue, queue_timeout_s=args.queue_timeout,
                         generation_timeout_s=args.generation_timeout)
    try:
        serve(args.model, host=args.host, port=args.port, limits=limits, api_key_env=args.api_key_env or API_KEY_ENV,
              on_ready=lambda url: print(f"serving {args.model} at {url}"))
    except ValueError as err:  # a refused bind names the variable to set
        print(f"serve: {err}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltabelief",
        description="Train and evaluate information-seeking LLM agents with ΔBelief-RL.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("play", help="play one game with a model and print it turn by turn")
    _add_config_args(p)
    p.add_argument("--target", required=True, help="the secret, e.g. dog")
    p.add_argument("--judge", choices=["kb", "local", "openai"], help="who answers (default: from the config)")
    p.add_argument("--model", help="policy model: smollm2, tiny, a directory, a .gguf file or a hub id")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--eval-mode", action="store_true", help="sample with the evaluation temperature/top-p/top-k")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("judge", help="ask the judge one question; the last line is the status label")
    _add_config_args(p)
    p.add_argument("--target", required=True, help="the secret")
    p.add_argument("--question", required=True, help="the questioner's move")
    p.add_argument("--history", default="", help="earlier questions separated by '|' (for repeat detection)")
    p.add_argument("--judge", choices=["kb", "local", "openai"], help="who answers (default: from the config)")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("synth", help="write targets.parquet (and teacher trajectories.parquet)")
    _add_config_args(p)
    p.add_argument("--source", help="kb | words:PATH | reference:PATH | paprika:PATH")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--task", help="task name stored with the targets (default: twenty_questions)")
    p.add_argument("--seed", type=int, help="split seed")
    p.add_argument("--split", help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--teacher", choices=["none", "greedy", "noisy"], help="teacher for trajectories (kb only)")
    p.add_argument("--games", type=int, help="number of teacher games")
    p.add_argument("--only-solved", action="store_true", help="keep only solved teacher games")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("validate", help="check a dataset against its data contract (exit 1 on failure)")
    p.add_argument("--kind", required=True, choices=["targets", "trajectories", "eval"], help="dataset kind")
    p.add_argument("path", help="parquet file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sft", help="warm-start the policy on teacher trajectories")
    _add_config_args(p)
    p.add_argument("--trajectories", required=True, help="trajectories.parquet from `deltabelief synth`")
    p.add_argument("--out", required=True, help="output directory for the model")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("train", help="ΔBelief-RL (or a baseline estimator) on the single-machine trainer")
    _add_config_args(p)
    p.add_argument("--targets", required=True, help="targets.parquet (the train split is used)")
    p.add_argument("--out", required=True, help="output directory for checkpoints and the final model")
    p.add_argument("--estimator", choices=["turn_grpo", "grpo", "rloo", "gigpo", "turn_rloo"], help="credit assignment")
    p.add_argument("--model", help="starting model (e.g. the SFT output directory)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="measure whether beliefs track the evidence; choose the elicitation")
    _add_config_args(p)
    p.add_argument("--model", help="model to score with")
    p.add_argument("--trajectories", required=True, help="held-out trajectories.parquet")
    p.add_argument("--templates", help="comma-separated elicitation templates, each containing {target}")
    p.add_argument("--out", required=True, help="output directory for the report and plots")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="evaluate a model on in-distribution and out-of-distribution suites")
    _add_config_args(p)
    p.add_argument("--model", help="model to evaluate")
    p.add_argument("--suites", help="comma-separated: twenty_questions,guess_my_city,murder_mystery,...")
    p.add_argument("--k", type=int, help="repeats per target (pass@k, mean@k)")
    p.add_argument("--budgets", help="turn budgets, e.g. 10,20,30,50")
    p.add_argument("--judge", choices=["kb", "local", "openai"], help="judge backend")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="serve a local model over the OpenAI chat-completions protocol")
    p.add_argument("--model", default="smollm2", help="model spec (default: smollm2)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="environment variable holding the API key clients must send as 'Authorization: Bearer KEY' "
                        "(default: DELTABELIEF_SERVE_API_KEY); without a key only loopback may be bound")
    p.add_argument("--max-queue", type=_at_least(0), default=16, help="requests that may wait for the model (default: 16)")
    p.add_argument("--queue-timeout", type=_positive_seconds, default=120.0,
                   help="seconds a request may wait for the model before HTTP 503 (default: 120)")
    p.add_argument("--generation-timeout", type=_positive_seconds, default=120.0,
                   help="seconds one generation may run before it is stopped with HTTP 503 (default: 120)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error the user can fix is one line on stderr and a non-zero exit
    (deltabelief/user_errors.py), with the traceback above it under ``-v``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # to print the exact command again (e.g. with --resume after Ctrl-C)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(f"deltabelief {args.command}", lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
