"""``python -m ihclib.native``: build the compiled prefix now (``make setup`` runs it); says where
it is or why it cannot be built (then ihclib uses TensorFlow's layers). Always exits 0."""

from . import available, build, unavailable_reason

if available():
    print(f"ihclib.native: compiled prefix at {build()}")
else:
    print(f"ihclib.native: no compiled prefix ({unavailable_reason()}); the TensorFlow layers are used "
          f"(set CC to a C compiler, or {ENV_VAR}=0 to silence)")
