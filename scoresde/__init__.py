"""scoresde: score-based generative modelling with SDEs, in pure PyTorch."""
__version__ = "0.1.0"
