"""Builders of the models made from the tasks' own text (``tiny``, ``tiny-vl``; gp-base is
``deploy.models.gp_base``). The catalogue in ``sftrl.models.store`` names them as ``"module:function"``
strings and ``sftrl models prepare`` imports them only then: the ground floor holds the model store,
and what needs the environments lives up here."""
