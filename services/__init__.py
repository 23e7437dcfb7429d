"""The roles of sftrl: environments, verifiers, rollout and learner (one package each)."""
