"""Training: the ``Trainer``, its callbacks, the loss, the optimiser and everything a run folder holds."""
