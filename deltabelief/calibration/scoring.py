"""From a ``trajectories.parquet`` to belief scores: games, token-exact trajectories, candidates.

Shape notation: ``N`` turns of one game (so N+1 histories h_0..h_N), ``C`` candidates, ``K`` a
target's tokens, ``L`` packed tokens, ``U`` positions whose logits are read, ``V`` vocabulary.

- :func:`read_games` / :func:`select_games`: rows of ``trajectories.parquet`` (schema in
  :mod:`deltabelief.synthesis`) as :class:`CalibrationGame`, checked field by field.
- :func:`to_trajectory`: the token-exact :class:`~deltabelief.trajectory.Trajectory` a rollout
  would have recorded (``prompt | move_1 | obs_1 | … | move_N | obs_N``), built with
  :mod:`deltabelief.policy.chat`; each move's text is tokenised on its own, like the SFT trainer does.
- :func:`candidate_lists`: the true target first, then a seeded subset of the candidate pool.
- :func:`consistent_sets`: C_t, the knowledge-base nouns consistent with the answers after turn t.
- :class:`ModelScorer`: log b_t of the true target (:func:`deltabelief.belief.score_beliefs`,
  the scorer the trainer uses) and of every candidate (:func:`score_candidates`).

Cost of candidate scoring. Naively, C candidates cost C packed forwards of one trajectory, each
re-reading the whole history. :func:`score_candidates` packs the history once and, for every
turn t, one shared copy of the template prefix followed by every candidate's target tokens::

    input_ids[:e_N] | P_0 | y^1_0 | … | y^C_0 | P_1 | y^1_1 | … | y^C_N

P_t attends to h_t (= ``input_ids[:e_t]``) and causally to itself; y^c_t attends to h_t, to P_t
and causally to itself, with position ids continuing from e_t (a tree-shaped 4-D mask). One
forward costs e_N + (N+1)·(|P| + Σ_c K_c) tokens instead of C·(e_N + (N+1)·(|P| + K)). When that
exceeds ``max_packed_tokens`` the candidates are split into chunks, each re-reading the history.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from deltabelief.belief import UnlocatableTargetError, build_elicitation, eval_mode, score_beliefs, turn_ends
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import Target

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "task", "target_id", "target", "split", "messages", "moves", "answers",
                    "statuses", "solved", "log_posterior")


@dataclass
class CalibrationGame:
    """One row of ``trajectories.parquet``."""

    id: str
    task: str
    target_id: str
    target: str
    split: str
    messages: list[dict[str, str]]
    """Opening messages, then one assistant move and one user answer per turn."""
    moves: list[str]
    answers: list[str]
    statuses: list[str]
    solved: bool
    log_posterior: list[float] = field(default_factory=list)
    """log b*_t for t = 0..N (nats); empty when the game has no exact posterior."""

    @property
    def num_turns(self) -> int:
        return len(self.moves)

    @property
    def has_posterior(self) -> bool:
        return len(self.log_posterior) > 0


def _game_from_row(row: dict, where: str) -> CalibrationGame:
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
    game = CalibrationGame(
        id=str(row["id"]), task=str(row["task"]), target_id=str(row["target_id"]), target=str(row["target"]),
        split=str(row["split"]), messages=messages, moves=[str(m) for m in row["moves"]],
        answers=[str(a) for a in row["answers"]], statuses=[str(s) for s in row["statuses"]],
        solved=bool(row["solved"]), log_posterior=[float(x) for x in row["log_posterior"]],
    )
    n = game.num_turns
    if len(game.answers) != n or len(game.statuses) != n:
        raise ValueError(f"{where}: {n} moves but {len(game.answers)} answers and {len(game.statuses)} statuses")
    if game.log_posterior and len(game.log_posterior) != n + 1:
        raise ValueError(f"{where}: log_posterior has {len(game.log_posterior)} values, expected N+1 = {n + 1}")
    opening = _opening_length(game.messages, where)
    turns = game.messages[opening:]
    expected = [m for move, answer in zip(game.moves, game.answers)
                for m in ({"role": "assistant", "content": move}, {"role": "user", "content": answer})]
    if turns != expected:
        raise ValueError(f"{where}: messages after the opening must alternate assistant move / user answer "
                         f"and match the moves and answers columns")
    return game


def _opening_length(messages: list[dict[str, str]], where: str) -> int:
    roles = [m["role"] for m in messages]
    opening = roles.index("assistant") if "assistant" in roles else len(roles)
    if opening == 0:
        raise ValueError(f"{where}: the conversation starts with an assistant message; it needs opening messages")
    return opening


def read_games(path: str | Path) -> list[CalibrationGame]:
    """Every row of a ``trajectories.parquet`` as a :class:`CalibrationGame` (validated)."""
    from deltabelief.data.files import DataFileError, read_parquet

    frame = read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFileError(f"{path}: missing column(s) {missing} (columns: {list(frame.columns)})")
    return [_game_from_row(row, f"{path}: row {i} (id {row['id']!r})")
            for i, row in enumerate(frame.to_dict(orient="records"))]


def select_games(games: list[CalibrationGame], splits: Sequence[str], num: int, seed: int,
                 fallback_to_all: bool = False) -> tuple[list[CalibrationGame], list[str]]:
    """Games of ``splits`` (all when empty); a seeded sample of ``num`` of them (all when 0), in file order.

    Returns the games and the splits they came from. With no game in ``splits`` it raises, or with
    ``fallback_to_all`` logs a warning and takes every row (the caller reports it).
    """
    present = sorted({g.split for g in games})
    chosen = [g for g in games if not splits or g.split in splits]
    if not chosen and fallback_to_all:
        log.warning("no trajectories in split(s) %s (the file has %s): scoring every row instead; these "
                    "games are not held out", list(splits), present)
        chosen = list(games)
    if not chosen:
        raise ValueError(f"no trajectories in split(s) {list(splits)}; the file has {present} "
                         f"(set calibration.splits, e.g. to [] for every row)")
    if num and len(chosen) > num:
        keep = set(random.Random(seed).sample(range(len(chosen)), num))
        chosen = [g for i, g in enumerate(chosen) if i in keep]
    return chosen, sorted({g.split for g in chosen})


def to_trajectory(tokenizer, game: CalibrationGame, index: int = 0) -> Trajectory:
    """The token-exact trajectory of ``game``: h_0 from the chat template, then every move's own
    tokens and its observation (end of turn, answer as a user message, next assistant header)."""
    from deltabelief.policy.chat import encode, observation_ids, prompt_ids

    opening = game.messages[: _opening_length(game.messages, f"game {game.id!r}")]
    ids = prompt_ids(tokenizer, opening)
    trajectory = Trajectory(
        target=Target(id=game.target_id, task=game.task, answer=game.target), group_id=index, sample_index=index,
        input_ids=list(ids), prompt_length=len(ids), messages=[dict(m) for m in game.messages], solved=game.solved,
    )
    for move, answer, status in zip(game.moves, game.answers, game.statuses):
        move_ids = encode(tokenizer, move)
        start = len(trajectory.input_ids)
        trajectory.input_ids.extend(move_ids)
        span = (start, len(trajectory.input_ids))
        trajectory.input_ids.extend(observation_ids(tokenizer, answer))
        trajectory.turns.append(PolicyTurn(token_ids=move_ids, span=span, logprobs=[], move=move, answer=answer,
                                           status=status, end_of_turn=len(trajectory.input_ids)))
    return trajectory


def unlocatable_reason(tokenizer, template: str, target: str, strict: bool = True) -> str | None:
    """Why ``target``'s tokens cannot be located in ``template`` (None when they can).

    Unlocatable: the template has no single ``{target}`` marker, the target is empty, or (``strict``)
    the piecewise ids differ from the ids of the whole rendered text, i.e. the target's first or
    last token merges with the template's text, so the scored tokens never occur in real text.
    """
    try:
        elicitation = build_elicitation(tokenizer, template, target)
    except UnlocatableTargetError as err:
        return str(err)
    if strict and not elicitation.matches_whole_text:
        return (f"target {target!r}: its tokens merge with the text of template {template!r} "
                f"(piecewise ids differ from the whole rendered text)")
    return None


def candidate_lists(games: Sequence[CalibrationGame], pools: Sequence[Sequence[str]], num: int,
                    seed: int) -> list[list[str]]:
    """Per game: the true target, then the other targets of its pool, at most ``num`` in all
    (0: the whole pool). The subset is drawn with a generator seeded by ``seed`` and the game id,
    so it is the same under every template."""
    out = []
    for game, pool in zip(games, pools):
        others = list(dict.fromkeys(c for c in pool if c != game.target))  # distinct, pool order
        if num and len(others) > num - 1:
            others = random.Random(f"{seed}:{game.id}").sample(others, max(num - 1, 0))
        out.append([game.target, *others])
    return out


def consistent_sets(kb, game: CalibrationGame) -> list[list[str]]:
    """C_0..C_N: knowledge-base nouns consistent with the first t answers; |C_t| is checked
    against the stored exact posterior log b*_t = −log|C_t|."""
    from deltabelief.data.teachers import consistent_nouns

    sets = []
    for t in range(game.num_turns + 1):
        nouns = consistent_nouns(kb, game.moves[:t], game.statuses[:t], game.target)
        stored = game.log_posterior[t]
        if game.target not in nouns or not math.isclose(-math.log(len(nouns)), stored, abs_tol=1e-6):
            raise ValueError(f"game {game.id!r}, turn {t}: the knowledge base gives {len(nouns)} consistent "
                             f"noun(s) {'with' if game.target in nouns else 'without'} the target {game.target!r}, "
                             f"but log_posterior stores {stored:.6f} (= −log {math.exp(-stored):.3f}); "
                             f"were the trajectories made with other game.kb_nouns?")
        sets.append(nouns)
    return sets


class BeliefScorer(Protocol):
    """What :func:`deltabelief.calibration.calibrate` needs; tests inject stand-ins."""

    def unlocatable_reason(self, template: str, target: str) -> str | None:
        """None when ``target`` can be scored under ``template``, else the reason."""

    def true_target(self, games: Sequence[CalibrationGame], template: str) -> list[np.ndarray]:
        """Per game, [N+1] log b_t of its own target."""

    def candidates(self, games: Sequence[CalibrationGame], candidates: Sequence[Sequence[str]],
                   template: str) -> list[np.ndarray]:
        """Per game, [N+1, C] log b_t of each candidate (column 0 is the true target)."""


def tree_attention_mask(segment_start: torch.Tensor, context_end: torch.Tensor, shared_start: torch.Tensor,
                        shared_end: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for one packed row: query i sees keys j with segment_start[i] <= j <= i,
    j < context_end[i], or shared_start[i] <= j < shared_end[i].

    Args: four [L] long tensors. Returns: [1, 1, L, L] of ``dtype`` (0 allowed, −inf elsewhere).
    """
    length = segment_start.shape[0]
    query = torch.arange(length)[:, None]  # [L, 1]
    key = torch.arange(length)[None, :]  # [1, L]
    allowed = (key >= segment_start[:, None]) & (key <= query)  # [L, L] own segment, causal
    allowed |= key < context_end[:, None]  # [L, L] the history h_t
    allowed |= (key >= shared_start[:, None]) & (key < shared_end[:, None])  # [L, L] the turn's shared prefix
    return torch.zeros((length, length), dtype=dtype).masked_fill(~allowed, float("-inf"))[None, None]


def _pack_candidates(trajectory: Trajectory, prefix: list[int], targets: list[list[int]]) -> dict:
    """Layout of :func:`score_candidates` for one chunk of candidates; ``read[c]`` is [N+1, K_c]."""
    ends = turn_ends(trajectory)
    ids = list(trajectory.input_ids[: ends[-1]])
    pos, seg, ctx = list(range(len(ids))), [0] * len(ids), [0] * len(ids)
    sh_start, sh_end = [0] * len(ids), [0] * len(ids)
    read: list[list[list[int]]] = [[] for _ in targets]

    def add(tokens: list[int], first_position: int, end: int, shared: tuple[int, int]) -> int:
        start = len(ids)
        ids.extend(tokens)
        pos.extend(range(first_position, first_position + len(tokens)))  # positions continue from h_t
        seg.extend([start] * len(tokens))
        ctx.extend([end] * len(tokens))
        sh_start.extend([shared[0]] * len(tokens))
        sh_end.extend([shared[1]] * len(tokens))
        return start

    for end in ends:
        p_start = add(prefix, end, end, (0, 0))
        # the logits at the prefix's last token (or h_t's last, for an empty prefix) predict y_1
        first_reader = p_start + len(prefix) - 1 if prefix else end - 1
        for c, target in enumerate(targets):
            t_start = add(target, end + len(prefix), end, (p_start, p_start + len(prefix)))
            read[c].append([first_reader] + [t_start + k - 1 for k in range(1, len(target))])
    return {"ids": ids, "positions": pos, "segment_start": seg, "context_end": ctx,
            "shared_start": sh_start, "shared_end": sh_end, "read": read}


def _chunks(history: int, num_ends: int, prefix: int, lengths: list[int], budget: int) -> list[list[int]]:
    """Candidate indices per forward so that history + (N+1)·(|P| + Σ K_c) stays within ``budget``
    (a chunk holds at least one candidate)."""
    chunks: list[list[int]] = [[]]
    used = history + num_ends * prefix
    for c, k in enumerate(lengths):
        if chunks[-1] and used + num_ends * k > budget:
            chunks.append([])
            used = history + num_ends * prefix
        chunks[-1].append(c)
        used += num_ends * k
    return chunks


def score_candidates(model, trajectory: Trajectory, elicitations: Sequence, max_packed_tokens: int = 2048
                     ) -> torch.Tensor:
    """log b_t(c) for t = 0..N and every candidate elicitation (all built from one template).

    Args:
        elicitations: C :class:`~deltabelief.belief.Elicitation` sharing the same ``prefix_ids``.
    Returns:
        [N+1, C] float32 log-beliefs (sum over each candidate's tokens, temperature 1).
    """
    prefixes = {e.prefix_ids for e in elicitations}
    if len(prefixes) != 1:
        raise ValueError(f"candidate elicitations must share one template prefix, got {len(prefixes)}")
    prefix = list(elicitations[0].prefix_ids)
    targets = [list(e.target_ids) for e in elicitations]
    num_ends = trajectory.num_turns + 1
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = torch.zeros((num_ends, len(targets)), dtype=torch.float32)  # [N+1, C]
    history = turn_ends(trajectory)[-1]
    with eval_mode(model):
        for chunk in _chunks(history, num_ends, len(prefix), [len(t) for t in targets], max_packed_tokens):
            pack = _pack_candidates(trajectory, prefix, [targets[c] for c in chunk])
            as_long = {k: torch.tensor(v, dtype=torch.long) for k, v in pack.items() if k != "read"}  # [L] each
            mask = tree_attention_mask(as_long["segment_start"], as_long["context_end"], as_long["shared_start"],
                                       as_long["shared_end"], dtype)  # [1, 1, L, L]
            reads = [torch.tensor(r, dtype=torch.long) for r in pack["read"]]  # C_chunk x [N+1, K_c]
            keep = torch.unique(torch.cat([r.flatten() for r in reads]))  # [U] sorted positions to read
            logits = model(input_ids=as_long["ids"][None].to(device),  # [1, L]
                           position_ids=as_long["positions"][None].to(device),  # [1, L]
                           attention_mask=mask.to(device), logits_to_keep=keep.to(device),
                           use_cache=False).logits  # [1, U, V]
            logprobs = torch.log_softmax(logits[0].float(), dim=-1).cpu()  # [U, V] temperature 1
            for c, read in zip(chunk, reads):
                rows = torch.searchsorted(keep, read)  # [N+1, K_c] index into U
                target = torch.tensor(targets[c]).expand(rows.shape)  # [N+1, K_c]
                out[:, c] = logprobs[rows, target].sum(-1)  # [N+1] log b_t(c) = Σ_k log π(y_k | …)
    return out


class ModelScorer:
    """Belief scores from a causal LM; trajectories are tokenised once per game and cached."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_packed_tokens: int = 2048,
                 strict_tokenization: bool = True, progress: bool = False):
        self.model, self.tokenizer, self.progress = model, tokenizer, progress
        self.batch_size, self.max_packed_tokens = batch_size, max_packed_tokens
        self.strict_tokenization = strict_tokenization
        self._trajectories: dict[str, Trajectory] = {}

    def trajectory(self, game: CalibrationGame) -> Trajectory:
        if game.id not in self._trajectories:
            self._trajectories[game.id] = to_trajectory(self.tokenizer, game, len(self._trajectories))
        return self._trajectories[game.id]

    def unlocatable_reason(self, template: str, target: str) -> str | None:
        return unlocatable_reason(self.tokenizer, template, target, self.strict_tokenization)

    def true_target(self, games: Sequence[CalibrationGame], template: str) -> list[np.ndarray]:
        trajectories = [self.trajectory(g) for g in games]
        scores = score_beliefs(self.model, self.tokenizer, trajectories, template, on_unlocatable="raise",
                               batch_size=self.batch_size)
        return [row.double().numpy() for row in scores.per_trajectory()]

    def candidates(self, games: Sequence[CalibrationGame], candidates: Sequence[Sequence[str]],
                   template: str) -> list[np.ndarray]:
        out = []
        bar = tqdm(zip(games, candidates), total=len(games), desc="candidates", unit="game", disable=not self.progress)
        for game, names in bar:
            elicitations = [build_elicitation(self.tokenizer, template, name) for name in names]
            out.append(score_candidates(self.model, self.trajectory(game), elicitations,
                                        self.max_packed_tokens).double().numpy())
        return out
