"""Rollout: vLLM engines playing multi-turn episodes against the environments.

Rollout knows nothing of losses: it produces :class:`sftrl.trajectory.Trajectory` records.
"""
