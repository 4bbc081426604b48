"""Recipes: one readable module per domain that trains CL and NCL side by side.

A recipe module holds only its settings and the wiring data -> model -> loss -> the shared
:class:`ncl_ext.training.Trainer` -> :mod:`ncl_ext.analysis`; it owns no training loop and
imports no other recipe. It defines

- ``Config``: a dataclass whose fields are declared with :func:`ncl_ext.recipes.config.setting`
  (default, one-line help, checks); its presets are YAML files in the top-level
  ``recipes/<recipe>/`` folder, shipped in the package;
- ``RUN_NAMES`` and ``DEFAULT_PRESET`` (and ``SHARED_FOLDERS``, folders of models that
  several runs share, which ``--fresh`` removes with the runs);
- ``prepare(config, output) -> context``: what every run of one command shares (data, accelerator);
- ``train(config, run, context, output) -> model``: trains one run (resuming from its checkpoints);
- ``evaluate(config, run, model, context, output) -> {metric: value}``;
- optionally ``derived_settings(config)`` (the optimizer it builds, shown by ``--dry-run``) and
  ``summarize(config, runs, output)`` (figures over all runs).

:func:`run_recipe` (:mod:`ncl_ext.recipes.runner`) does the rest: settings, resume, provenance.

Examples:
    >>> from ncl_ext.recipes import RECIPES, resolve_config
    >>> config, preset = resolve_config("vision-ssl", "cifar10")
    >>> preset, config.lars_eta, config.projector
    ('cifar10', 0.02, (2048, 256))
    >>> results = run_recipe("vision-ssl", overrides=["epochs=1"], output="out")     # doctest: +SKIP
"""

from ncl_ext.recipes.runner import RECIPES, derived_settings, load_recipe, resolve_config, run_recipe

__all__ = ["RECIPES", "derived_settings", "load_recipe", "resolve_config", "run_recipe"]
