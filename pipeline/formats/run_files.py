"""The file names of the training and evaluation outputs: what `mer train` and `mer evaluate` write and
what the run report and `mer lineage` read, named here so readers need neither torch nor the trainer.
The folder layouts are described in `pipeline.training.checkpoint` and `pipeline.stages.evaluate`."""

METRICS_FILE = "metrics.json"  # the scores `mer train` and `mer evaluate` write in their output folder
BEST_DIR = "best"  # the selected checkpoint, in the training output folder and inside last/
LAST_DIR = "last"  # the resumable state
CHECKPOINT_JSON = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "feature_stats.safetensors"
TRAIN_STATE = "trainer_state.json"
