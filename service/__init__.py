"""The hpo-service API: studies, leases, the Optuna sampler and pruner, and the `hpo` CLI."""
