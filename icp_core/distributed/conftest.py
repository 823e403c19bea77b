"""Doctest collection: ray_engine imports Ray at module level, so skip it where Ray is absent."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("ray") else ["ray_engine.py"]
