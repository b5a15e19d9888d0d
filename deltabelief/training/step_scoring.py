"""A step's beliefs and its log π_old from one no-grad forward over prefix trees.

Both passes read the rollout policy on the same tokens: log b_t scores the elicitation suffix
after every h_t, log π_old scores the sampled moves. Here every rollout is one chain of a
prefix tree (:mod:`~deltabelief.training.prefix_tree`) and each suffix_t is a branch hung
below h_t's last token, at position e_t. Rollouts that share a prompt share its nodes, and a
suffix that two rollouts of one target hang below the same h_0 is one branch. Sorting the
rollouts by their tokens keeps shared prefixes in the same row. One forward per row of at most
``max_tokens`` nodes gives hidden states for both reads: the suffix's target tokens at
temperature 1 (the belief), the moves at the sampling temperature (the ratio's denominator).

The values equal :func:`~deltabelief.belief.score_beliefs` and
:func:`~deltabelief.training.logprobs.token_logprobs` up to float rounding (the rows' shapes
differ); ``tests/test_step_scoring.py`` holds that on a model.

Shapes: ``B`` rollouts, ``R`` rows, ``N`` nodes in the longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from deltabelief.belief import BeliefScores, assemble_scores, elicitations_for, eval_mode, turn_ends
from deltabelief.policy.chat import pad_id
from deltabelief.training.prefix_tree import TreeRow, collate_rows, read_logprobs, tree_hidden
from deltabelief.trajectory import Trajectory


@dataclass
class _Placement:
    row: int
    path: list[int]
    """The node of each of the rollout's tokens."""
    targets: list[list[int]]
    """[N+1, K] the node of target token k in suffix_t."""


def _plan(trajectories: Sequence[Trajectory], elicitations, max_tokens: int,
          ) -> tuple[list[TreeRow], dict[int, _Placement]]:
    rows, placed = [TreeRow()], {}
    order = sorted(range(len(trajectories)), key=lambda i: list(trajectories[i].input_ids))
    for i in order:
        ids, elicitation = trajectories[i].input_ids, elicitations[i]
        ends = turn_ends(trajectories[i]) if elicitation is not None else []
        suffix = elicitation.ids if elicitation is not None else []
        size = rows[-1].new_nodes(ids) + len(ends) * len(suffix)  # at most this many new nodes
        if rows[-1].num_sequences and len(rows[-1]) + size > max_tokens:
            rows.append(TreeRow())
        row = rows[-1]
        path = row.add(ids, [0] * len(ids))
        targets = []
        for end in ends:  # suffix_t continues h_t = ids[:end] from its last token, at position e_t
            branch = row.attach(path[end - 1], end, suffix, [0] * len(suffix))
            targets.append(branch[len(elicitation.prefix_ids):])
        placed[i] = _Placement(len(rows) - 1, path, targets)
    return [r for r in rows if r.num_sequences], placed


def score_step(
    model,
    tokenizer,
    trajectories: Sequence[Trajectory],
    template: str,
    *,
    on_unlocatable: Literal["raise", "exclude"] = "raise",
    old_logprobs: bool = True,
    temperature: float = 1.0,
    max_tokens: int = 2048,
) -> tuple[BeliefScores, list[list[float]] | None]:
    """log b_0..log b_N of every rollout and, with ``old_logprobs``, log π of its sampled tokens.

    Returns:
        (the :class:`~deltabelief.belief.BeliefScores` of :func:`~deltabelief.belief.score_beliefs`,
        one ragged [L_i] list per rollout with log π(token) at ``temperature`` on its policy tokens
        and 0 elsewhere, or None without ``old_logprobs``).

    The model is put in eval mode under ``torch.no_grad`` for the call and restored afterwards.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    elicitations, excluded, mismatches = elicitations_for(tokenizer, trajectories, template, on_unlocatable)
    rows, placed = _plan(trajectories, elicitations, max_tokens)
    masks = {i: t.response_mask() for i, t in enumerate(trajectories)} if old_logprobs else {}
    pad = pad_id(tokenizer)
    dtype = model.get_input_embeddings().weight.dtype
    beliefs: dict[int, torch.Tensor] = {}
    tokens: dict[int, list[float]] = {}
    with eval_mode(model):
        for r, row in enumerate(rows):
            members = [i for i, p in placed.items() if p.row == r]
            batch = collate_rows([row], pad, dtype)
            hidden = tree_hidden(model, batch)  # [1, N, H]
            targets = torch.zeros((1, len(row)), dtype=torch.bool)  # [1, N]
            moves = torch.zeros((1, len(row)), dtype=torch.bool)  # [1, N]
            for i in members:
                for branch in placed[i].targets:
                    targets[0, branch] = True
                if old_logprobs:
                    moves[0, [n for n, m in zip(placed[i].path, masks[i]) if m]] = True
            at_one = read_logprobs(model, hidden, batch, targets)[0].cpu()  # [N] temperature 1
            at_t = read_logprobs(model, hidden, batch, moves, temperature)[0].cpu() if old_logprobs else None
            for i in members:
                if elicitations[i] is not None:
                    index = torch.tensor(placed[i].targets, dtype=torch.long)  # [N_i+1, K]
                    beliefs[i] = at_one[index].sum(-1)  # [N_i+1] log b_t = Σ_k log π(y_k | h_t, prefix, y_<k)
                if old_logprobs:
                    tokens[i] = [float(at_t[n]) if m else 0.0 for n, m in zip(placed[i].path, masks[i])]
    scores = assemble_scores(trajectories, beliefs, elicitations, excluded, mismatches)
    return scores, ([tokens[i] for i in range(len(trajectories))] if old_logprobs else None)
