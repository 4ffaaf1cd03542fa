"""KerasTuner search over an architecture's declared search space plus the fit-time settings.

`python -m keras_digits.tune` (docs/tuning.md). One module per concern:
`space` (what is searched), `hypermodel` (build and fit a trial), `search` (the tuners: bookkeeping,
memory, reports as trials end), `distributed` (chief/worker: leases, heartbeat, gRPC; the only module
touching KerasTuner internals), `report` (trial tables, best config), `cli` (the command). Importing
this package imports neither KerasTuner nor TensorFlow.
"""
