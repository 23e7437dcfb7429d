"""Entry points and orchestration: the command line (``cli/``, ``commands/``), the training loop
(``train/``), evaluation and the endpoint (``evaluate/``), the papers' studies and reports
(``studies/``), the models made here (``models/``)."""
