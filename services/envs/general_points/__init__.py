"""GeneralPoints (GP-L text, GP-VL image): the 24-points card game of paper 1."""

from services.envs.general_points.env import GeneralPointsEnv, GeneralPointsOptions

__all__ = ["GeneralPointsEnv", "GeneralPointsOptions"]
