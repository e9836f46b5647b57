"""Training loops: supervised classifiers (the zoo) and the spectral-analysis toy tasks."""
from ntkbench.training.classifier import TrainConfig, evaluate_logits, train_classifier

__all__ = ["TrainConfig", "train_classifier", "evaluate_logits"]
