"""The learner: DeepSpeed engines training the policy with SFT, PPO, GRPO and RLOO (issue 4).

The learner knows nothing of environments: it consumes demonstration files and trajectories.
"""
