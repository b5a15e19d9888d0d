"""Launch plans: one per preset, and the nightly retraining schedule.

Knobs a user may change at launch time are ``default_inputs``; values that define the
plan are ``fixed_inputs``. (``pyflyte run`` on a launch plan ignores fixed inputs; call
the plan from Python, as the tests do, or launch it on a Flyte cluster.)
"""

from __future__ import annotations

import os

from flytekit import CronSchedule, LaunchPlan

from workflows.nightly import nightly_retrain_pipeline
from workflows.pipeline import delta_belief_pipeline, delta_belief_pipeline_gpu

NIGHTLY = "0 2 * * *"  # 02:00 UTC every day
# The preset the schedule retrains; fixed when the plan is registered.
NIGHTLY_PRESET = os.environ.get("DELTABELIEF_NIGHTLY_PRESET", "configs/cpu.yaml")

tiny_plan = LaunchPlan.get_or_create(
    delta_belief_pipeline, name="deltabelief_tiny", fixed_inputs={"config": "configs/tiny.yaml"}
)
cpu_plan = LaunchPlan.get_or_create(
    delta_belief_pipeline, name="deltabelief_cpu", fixed_inputs={"config": "configs/cpu.yaml"}
)
qwen3_1_7b_plan = LaunchPlan.get_or_create(
    delta_belief_pipeline_gpu, name="deltabelief_qwen3_1_7b", fixed_inputs={"config": "configs/qwen3-1.7b.yaml"}
)
qwen3_4b_plan = LaunchPlan.get_or_create(
    delta_belief_pipeline_gpu, name="deltabelief_qwen3_4b", fixed_inputs={"config": "configs/qwen3-4b.yaml"}
)
# Each night continues from the champion, with seeds and training targets from the kickoff time.
nightly_retrain = LaunchPlan.get_or_create(
    nightly_retrain_pipeline,
    name="deltabelief_nightly_retrain",
    fixed_inputs={"config": NIGHTLY_PRESET},
    default_inputs={"estimator": "", "num_steps": 0},
    schedule=CronSchedule(schedule=NIGHTLY, kickoff_time_input_arg="kickoff_time"),
)
