"""Training: the SFT warm start and the single-machine RL trainer.

- :mod:`~deltabelief.training.sft`: ``warm_start`` / ``train_sft`` (loss on the questioner's tokens only);
  :mod:`~deltabelief.training.sft_distributed`: the same on several GPUs under ``torchrun``
  (:mod:`~deltabelief.training.data_parallel`);
- :mod:`~deltabelief.training.rl`: ``RLTrainer`` and ``run_rl`` (rollout -> beliefs -> rewards ->
  advantages -> PPO-clip);
- :mod:`~deltabelief.training.ppo_loss`: the pure loss; :mod:`~deltabelief.training.checkpoints`:
  resumable checkpoints; :mod:`~deltabelief.training.metrics`: the per-step metric names.

Submodules are imported on use so that ``import deltabelief.training`` stays light.
"""
