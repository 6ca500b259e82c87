"""The sweep: Ray Tune + Optuna over the hybrid method, evaluation of every checkpoint, MLflow."""
