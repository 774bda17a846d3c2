"""The dialogue models: CMATH (Cross-Modality Augmented Transformer with Hierarchical Variational
Distillation) and the baselines `mlp`, `bigru`, `late_fusion`, by name in `model.registry`."""
