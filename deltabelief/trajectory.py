"""What a rollout produces: one record per game, with the exact tokens the policy sampled."""

from __future__ import annotations

from dataclasses import dataclass, field

from deltabelief.types import Message, Target


@dataclass
class PolicyTurn:
    token_ids: list[int]
    """The ids the policy sampled for this move, exactly (after the cut to one question)."""
    span: tuple[int, int]
    """[start, end) of ``token_ids`` inside :attr:`Trajectory.input_ids`."""
    logprobs: list[float]
    """Sampling log-probabilities of ``token_ids`` (at the sampling temperature)."""
    move: str
    answer: str
    status: str
    end_of_turn: int = 0
    """Index in ``input_ids`` where h_t ends: after the judge's answer and the next assistant
    header, so an elicitation text can be appended right there (rollouts always append the
    observation and header, even after the last move)."""


@dataclass
class Trajectory:
    target: Target
    group_id: int
    """One group per target: all rollouts of one target share it."""
    sample_index: int
    input_ids: list[int]
    """The whole rendered conversation, policy and observation tokens alike."""
    prompt_length: int
    """Tokens of the opening messages plus the first assistant header: h_0 ends here.

    Layout: prompt | move_1 | obs_1 | move_2 | obs_2 | ... | move_N | obs_N, where obs_t is the
    end-of-turn marker, the judge's answer as a user message and the next assistant header."""
    turns: list[PolicyTurn] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    solved: bool = False

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def response_mask(self) -> list[int]:
        """1 on policy-sampled tokens, 0 on prompt, observation and template tokens."""
        mask = [0] * len(self.input_ids)
        for turn in self.turns:
            start, end = turn.span
            mask[start:end] = [1] * (end - start)
        return mask

    def statuses(self) -> list[str]:
        return [t.status for t in self.turns]


def transcript(trajectory: Trajectory) -> dict:
    """A played game as a person reads it: the target, whether it was solved, and each turn's
    ``[move, answer, status]``."""
    return {"target": trajectory.target.answer, "solved": trajectory.solved,
            "turns": [[turn.move, turn.answer, turn.status] for turn in trajectory.turns]}
