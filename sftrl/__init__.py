"""sftrl: SFT and RL post-training of foundation models on Ray.

The top-level package holds what every service shares (typed configs, the command line);
the roles themselves live in ``services`` (envs, verifier, rollout, learner) and ``deploy``.
"""

__version__ = "0.1.0"
