"""The model registry: ``register_model`` / ``get_model`` / ``list_models``."""
from scoresde.registry import Registry

MODELS = Registry("model")


def register_model(name=None):
    """Decorator that registers a network class under ``name`` (default: the class name).

    A registered class takes an ml-collections config: ``cls(config)``."""
    return MODELS.register(name)


def get_model(name: str):
    """The network class registered under ``name``; ``ValueError`` listing the names if unknown."""
    return MODELS.get(name)


def list_models():
    """Sorted names of the registered networks."""
    return MODELS.list()
