"""Everything a training run needs around the model: fit, callbacks, checkpoints, loggers, config checks, DDP jobs."""
