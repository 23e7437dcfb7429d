"""V-IRL street navigation (V-IRL-L text, V-IRL-VL image) on synthetic cities or published routes."""

from services.envs.virl.env import VIRLEnv, VIRLOptions

__all__ = ["VIRLEnv", "VIRLOptions"]
