"""The learner: DeepSpeed engines training the policy with SFT, PPO, GRPO and RLOO.

The learner knows nothing of environments: it consumes demonstration files and trajectories.
"""
