"""kinepy's generated etcd v3 stubs, imported without the kinepy package itself.

The load generator is a client: it needs ``kinepy/proto/*_pb2*.py`` and nothing of the server. Importing
``kinepy.proto`` normally runs ``kinepy/__init__.py``, which imports the whole server; a half-edited
working tree could then break the client, and the client would pay the server's import time. So when
``kinepy`` is not imported yet, an empty package module standing for it (same ``__path__``) is put in
``sys.modules`` first, and only the generated modules are loaded.
"""

from __future__ import annotations

import importlib.util
import sys
import types

if "kinepy" not in sys.modules:
    _spec = importlib.util.find_spec("kinepy")
    if _spec is None or _spec.submodule_search_locations is None:
        raise ImportError("kinepy is not importable: run from the repository root or pip install -e .")
    _package = types.ModuleType("kinepy")
    _package.__path__ = list(_spec.submodule_search_locations)
    sys.modules["kinepy"] = _package

from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

__all__ = ["kv_pb2", "rpc_pb2", "rpc_pb2_grpc"]
