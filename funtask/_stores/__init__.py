"""Stores: where job state lives (SPEC section 5).

The interface is :class:`funtask._stores.base.Store`; :func:`create_store`
builds the one a :class:`~funtask._stores.url.StoreURL` names. Each
implementation lives in its own module -- ``memory.MemoryStore``,
``sqlite.SQLiteStore``, ``redis.RedisStore`` -- imported only when chosen,
so the Redis extra stays optional.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from .base import Store
from .url import StoreURL

__all__ = ["create_store"]

_CLASSES: Final = {"memory": "MemoryStore", "sqlite": "SQLiteStore", "redis": "RedisStore"}


def create_store(url: StoreURL, **options: Any) -> Store:
    """A new, unopened store for ``url``; ``options`` are :class:`Store`'s keywords."""
    module = importlib.import_module(f".{url.kind}", __name__)
    cls: type[Store] = getattr(module, _CLASSES[url.kind])
    return cls(url, **options)
