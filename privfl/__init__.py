"""privfl: privacy-preserving federated learning on Flower and Opacus."""

__version__ = "0.2.0"
