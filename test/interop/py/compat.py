"""Load cheese-drawer's lib-python-amqp-worker on this machine's Python.

The library (0.2.0, commit 4791860) was written for Python 3.9 and
aio-pika 6; the tests run it, unmodified, on Debian's Python 3.11 and
aio-pika 8. Importing this module before the library applies the few shims
that takes, at import time, without touching the library's files:

- INTEROP_PY_LIB (required) is put first on sys.path: that is where
  `amqp_worker` is imported from.
- vhost: the library's ConnectionParameters has host, port, user and
  password only, and its connect() calls aio_pika.connect_robust without a
  virtualhost, so every library process would share "/". Its module-level
  name connect_robust is replaced by one that passes INTEROP_VHOST, so each
  test run stays in the vhost it created.
- traceback: ErrResponse calls traceback.format_exception(etype=...,
  value=..., tb=...), the signature Python 3.10 removed; there it raises
  TypeError inside the error path and a failing handler sends no reply.
  The library module's `traceback` name is given a format_exception that
  accepts the old keywords and calls the new function positionally.

- serialize_exception: on aio-pika 6.8 (the fleet's) RPC sends what
  serialize_exception returns as the reply body; aio-pika 8 serializes it
  again, and the library's returns bytes already, so on 8 every request the
  library cannot decode (not gzip, not JSON, not {"data": ...}) raised
  TypeError and got no reply. JSONGzipRPC.serialize_exception is given back
  its 6.8 effect: the reply is the gzip JSON ErrResponse envelope with AMQP
  type "error", as the fleet's workers send it.

Nothing else needed changing for aio-pika 8: the library's RPC and Master
subclasses use only serialize/deserialize, create, register, call,
create_worker and create_task, whose signatures are unchanged. What
differs on the client side (8 sends a uuid4 correlation id and a content
type, 6.8 an integer id and none) is left as it is: the Go side must take
both, and the interop tests' raw requests use 6.8's shape.
"""

import functools
import os
import sys
import traceback
import types

LIB = os.environ.get("INTEROP_PY_LIB", "")
if not LIB or not os.path.isdir(os.path.join(LIB, "amqp_worker")):
    sys.exit(
        f"INTEROP_PY_LIB={LIB!r} is not a checkout of lib-python-amqp-worker "
        "(no amqp_worker/ package in it)")
sys.path.insert(0, LIB)

VHOST = os.environ.get("INTEROP_VHOST", "/")
HOST = os.environ.get("BROKER_HOST", "127.0.0.1")
PORT = int(os.environ.get("BROKER_PORT", "5672"))
USER = os.environ.get("BROKER_USER", "guest")
PASSWORD = os.environ.get("BROKER_PASS", "guest")

# pylint: disable=wrong-import-position
import aio_pika  # noqa: E402

import amqp_worker  # noqa: E402,F401
import amqp_worker.connection  # noqa: E402
import amqp_worker.response  # noqa: E402
import amqp_worker.rpc_worker  # noqa: E402

amqp_worker.connection.connect_robust = functools.partial(
    aio_pika.connect_robust, virtualhost=VHOST)


def _format_exception(etype=None, value=None, tb=None, **kwargs):
    """traceback.format_exception with Python 3.9's keyword names."""
    return traceback.format_exception(etype, value, tb, **kwargs)


amqp_worker.response.traceback = types.SimpleNamespace(
    format_exception=_format_exception)

amqp_worker.rpc_worker.JSONGzipRPC.serialize_exception = (
    lambda self, exception: amqp_worker.response.ErrResponse(exception))


def connection_params():
    """The library's ConnectionParameters for this run's broker."""
    return amqp_worker.ConnectionParameters(
        host=HOST, port=PORT, user=USER, password=PASSWORD)


async def connect():
    """A plain aio-pika robust connection to this run's vhost."""
    return await aio_pika.connect_robust(
        host=HOST, port=PORT, login=USER, password=PASSWORD,
        virtualhost=VHOST)
