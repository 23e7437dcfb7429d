"""Evaluation: suites played by the rollout actors, their metrics, a registered checkpoint's evaluation
(``sftrl evaluate`` and the endpoint in ``serve/``), difficulty levels."""
