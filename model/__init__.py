"""The CMATH model (Cross-Modality Augmented Transformer with Hierarchical Variational Distillation)."""
