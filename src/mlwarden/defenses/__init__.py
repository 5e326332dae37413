"""Defenses, grouped like :mod:`mlwarden.attacks` so that each defense sits opposite the attacks it counters.

- :mod:`mlwarden.defenses.evasion`: robust training, input transformations,
  randomization, ensembles, certified smoothing and detectors of adversarial inputs;
- :mod:`mlwarden.defenses.poisoning`: defenses against poisoned training data;
- :mod:`mlwarden.defenses.extraction`: defenses against model stealing.

:mod:`mlwarden.defenses.registry` maps the names accepted by ``--defense`` to builders.
"""
