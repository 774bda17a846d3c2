"""The training sub-layer: dialogue data from a manifest and its stores, metrics, checkpoints and the
loops the train and evaluate stages run. Wires `model/` (tensors only) to the data formats."""
