"""Doctest collection: the ray_* modules import Ray at module level, so skip them where Ray is
absent."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("ray") else ["ray_*.py"]
