"""The hybrid batch training method in plain PyTorch: data, sampling, loss and encoder. No Ray here."""
