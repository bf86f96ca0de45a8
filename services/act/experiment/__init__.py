"""`actctl experiment` and `actctl demo`: the paper's downstream study offline, and the
one-command tour of the pipeline on bundled data (docs/experiment.md)."""
