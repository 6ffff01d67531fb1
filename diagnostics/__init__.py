"""Why a trial trained badly: findings measured on the worker, a report per study.

- ``diagnostics.codes``: the finding codes, their thresholds and the notes they come from
  (no TensorFlow; the service and the worker share it).
- ``diagnostics.probe``: the Keras callback that measures a trial (imports TensorFlow).
- ``diagnostics.report``: a study's report (importances, findings per parameter value,
  advice and a suggested next spec; Optuna, no TensorFlow).
"""
