"""Ray Train + DeepSpeed fine-tuning of the hybrid method: one job per configuration."""
