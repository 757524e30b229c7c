"""Loading an ml-collections config file by path: the ``get_config()`` of a ``configs/*.py`` file.

Kept free of heavy imports, so ``main.py`` can explain a broken ``--config`` before torch is loaded.
"""
import importlib.util
import os


class ConfigFileError(ValueError):
    """A config file that is missing or cannot be loaded; the message names it."""


def load_config_file(path: str):
    """``get_config()`` of the file ``path`` (``path:arg`` calls ``get_config(arg)``); every failure is a
    :class:`ConfigFileError` naming the file."""
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise ConfigFileError(f"config file {file!r} not found (relative to {os.getcwd()}); give the path of a "
                              f"configs/*.py file, e.g. --config configs/vp/digits.py")
    try:
        spec = importlib.util.spec_from_file_location("_scoresde_user_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigFileError(f"config file {file!r} defines no get_config() function; a config file returns "
                                  f"its ml_collections.ConfigDict from get_config() (see configs/vp/digits.py)")
        return module.get_config(arg) if arg else module.get_config()
    except ConfigFileError:
        raise
    except SyntaxError as e:
        raise ConfigFileError(f"config file {file!r} has a syntax error at line {e.lineno}: {e.msg}; fix it "
                              f"(python -m py_compile {file} shows where)") from e
    except Exception as e:  # noqa: BLE001  (any failure of the user's file is reported as its own)
        raise ConfigFileError(f"config file {file!r} failed to load: {type(e).__name__}: {e}") from e
