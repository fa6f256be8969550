"""A Python service built with lib-python-amqp-worker, for the interop tests.

Usage: service.py --rpc ROUTE=BEHAVIOUR ... --queue ROUTE=BEHAVIOUR ...

It runs one RPCWorker and one QueueWorker of the library (through compat,
see there for the shims) with the routes given, and reports on stdout, one
JSON object per line, what a test needs to observe:

  {"event": "ready"}                          every route is consuming
  {"event": "start_failed", "error": "..."}   a worker could not start (exit 3)
  {"event": "handled", "route": r, "data": d} a handler ran with data d
  {"event": "decode_failed", "error": "..."}  a body the library could not
                                              decode (it then requeues it)

Behaviours (the handler of the route):
  echo        returns data unchanged
  raise       raises ValueError("boom", 42)
  will-error  raises Exception(f"Just an exception: 7, {data}"), as the
              seed's will-error does (the seed's number is random)
  dictionary  returns {**data, "bar": "baz"}, as the seed's dictionary
  hello       returns "Hello world!"
  sleep       sleeps data seconds, then returns "slept"
  types       parses data's "date", "timestamp" and "amount" the way a
              Python service does (date.fromisoformat, datetime.fromisoformat,
              Decimal) and answers them as the transaction-service encodes
              them: isoformat() strings and the Decimal as a JSON number
  record      (queue) only reports the message
  queue-raise (queue) reports the message, then raises
Every behaviour reports "handled" before it answers.
"""

import argparse
import asyncio
import datetime
import decimal
import json
import logging
import re
import signal
import sys

import compat  # noqa: F401  (shims first)

# pylint: disable=wrong-import-order
from amqp_worker import QueueWorker, RPCWorker  # noqa: E402
from amqp_worker.queue_worker import JSONGzipMaster  # noqa: E402
from amqp_worker.rpc_worker import JSONGzipRPC  # noqa: E402
from amqp_worker.serializer import ResponseEncoder  # noqa: E402


PY39_ISO = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?([+-]\d\d:\d\d)?")


def emit(**event):
    """Write one event line for the test."""
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def watch_decoding(cls):
    """Report bodies cls.deserialize fails on, then fail as before."""
    original = cls.deserialize

    def deserialize(self, data):
        try:
            return original(self, data)
        except Exception as err:
            emit(event="decode_failed", pattern=cls.__name__,
                 error=repr(err), body=data[:80].hex())
            raise

    cls.deserialize = deserialize


watch_decoding(JSONGzipRPC)
watch_decoding(JSONGzipMaster)


class TransactionEncoder(ResponseEncoder):
    """The cheese-drawer transaction-service's encoder: dates as isoformat
    strings, Decimal as a JSON number (through float)."""

    def default(self, o):
        if isinstance(o, (datetime.date, datetime.datetime)):
            return o.isoformat()
        if isinstance(o, decimal.Decimal):
            return float(o)
        return ResponseEncoder.default(self, o)


def behaviour(route, name):
    """The handler for route doing behaviour name."""

    async def echo(data):
        return data

    async def raise_(data):
        raise ValueError("boom", 42)

    async def will_error(data):
        raise Exception(f"Just an exception: 7, {data}")

    async def dictionary(data):
        return {**data, "bar": "baz"}

    async def hello(data):
        return "Hello world!"

    async def sleep(data):
        await asyncio.sleep(float(data))
        return "slept"

    async def types(data):
        return {
            "date": datetime.date.fromisoformat(data["date"]),
            "timestamp": datetime.datetime.fromisoformat(data["timestamp"]),
            "amount": decimal.Decimal(str(data["amount"])),
            "amount_type": type(data["amount"]).__name__,
            # What Python 3.9's datetime.fromisoformat accepts (the fleet's
            # version): no "Z", a fraction of 3 or 6 digits or none.
            "timestamp_py39": PY39_ISO.fullmatch(data["timestamp"]) is not None,
        }

    async def record(data):
        return None

    async def queue_raise(data):
        raise RuntimeError(f"queue handler failed on {data!r}")

    impl = {
        "echo": echo, "raise": raise_, "will-error": will_error,
        "dictionary": dictionary, "hello": hello, "sleep": sleep, "types": types,
        "record": record, "queue-raise": queue_raise,
    }[name]

    async def handler(data):
        emit(event="handled", route=route, data=data)
        return await impl(data)

    handler.__name__ = f"{name}_{route}"
    return handler


async def main(args):
    """Start the workers, report ready, run until SIGTERM or SIGINT."""
    rpc = RPCWorker(compat.connection_params())
    queue = QueueWorker(compat.connection_params())
    workers = []
    for worker, specs in ((rpc, args.rpc), (queue, args.queue)):
        if not specs:
            continue
        for spec in specs:
            route, _, name = spec.partition("=")
            worker.route(route)(behaviour(route, name))
        workers.append(worker)
    if args.encoder == "transaction":
        # As transaction-service's json_gzip_rpc_factory does.
        async def factory(channel):
            pattern = await JSONGzipRPC.create(channel)
            pattern.json_encoder = TransactionEncoder()
            return pattern
        rpc._pattern_factory = factory  # pylint: disable=protected-access

    stops = []
    try:
        for worker in workers:
            stops.append(await worker.run())
    except Exception as err:  # pylint: disable=broad-except
        emit(event="start_failed", error=repr(err))
        for stop in stops:
            await stop()
        sys.exit(3)
    emit(event="ready")

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    for stop in stops:
        await stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc", action="append", default=[])
    parser.add_argument("--queue", action="append", default=[])
    parser.add_argument("--encoder", default="seed",
                        choices=["seed", "transaction"])
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(parser.parse_args()))
