"""Training: config, optimizer, train step, orbax checkpoints, metrics, the `ttc train` / `ttc eval` loop."""
