"""Python clients of an AMQP service, driven by the interop tests.

Reads one JSON command per line on stdin and answers each with one JSON
line on stdout, in order. Clients ("client" in a command):

  lib        the library's own client side: JSONGzipRPC.call for RPC and
             JSONGzipMaster.create_task for queues (gzip JSON,
             application/octet-stream; aio-pika 8's RPC: a reply must have
             AMQP type "result" or "error")
  aiojson    aio-pika's plain-JSON patterns, JsonRPC.call and
             JsonMaster.create_task (application/json, same RPC rules)
  pika       the seed's e2e helpers (test/integration/helpers): pika,
             gzip JSON, an exclusive reply queue, no check of the reply's type
  pika-json  the same with a plain JSON body (application/json)

Commands:
  {"op": "call", "client": c, "route": r, "data": d, "timeout": s,
   "expiration": seconds (optional; aio-pika's RPC.call expiration)}
  {"op": "call", "client": "pika", "route": r, "body": "<raw JSON text>"}
      -> {"ok": true, "result": <what the client returned>,
          "raw": "<reply body, gunzipped>", "props": {...reply properties}}
      or {"ok": false, "exception": {"type", "repr", "args"}}
  {"op": "calls", "client": c, "route": r, "items": [d, ...],
   "concurrency": n, "timeout": s}
      -> {"results": [<one answer as for call, without raw/props>, ...]}
  {"op": "publish", "client": c, "route": r, "data": d}
  {"op": "publishes", "client": c, "route": r, "items": [d, ...]}
      -> {"ok": true, "returned": bool} / {"results": [...]}

For exact numbers, "raw" is the reply's JSON text as it came, and "result"
is encoded from the client's Python value (ints are exact in Python,
JSON reals become floats).
"""

import asyncio
import concurrent.futures
import contextvars
import gzip
import json
import sys
import uuid

import compat  # noqa: F401  (shims first)

# pylint: disable=wrong-import-order
import aiormq.abc  # noqa: E402
import pika  # noqa: E402
from aio_pika.patterns import JsonMaster, JsonRPC  # noqa: E402
from amqp_worker.queue_worker import JSONGzipMaster  # noqa: E402
from amqp_worker.rpc_worker import JSONGzipRPC  # noqa: E402

GZIP_MAGIC = b"\x1f\x8b"


def props_of(message):
    """The AMQP properties of an aio-pika or pika message as JSON."""
    get = message.get if isinstance(message, dict) else (
        lambda name: getattr(message, name, None))
    out = {}
    for name in ("type", "content_type", "content_encoding", "correlation_id",
                 "delivery_mode", "expiration", "headers", "message_id",
                 "timestamp", "reply_to", "priority"):
        value = get(name)
        if hasattr(value, "value"):  # aio-pika's DeliveryMode enum
            value = value.value
        elif hasattr(value, "timestamp"):  # aio-pika's datetime
            value = int(value.timestamp())
        elif name == "headers" and value is not None:
            value = {k: v if isinstance(v, (str, int, float, bool))
                     else repr(v) for k, v in dict(value).items()}
        out[name] = value
    return out


def unzip(body):
    """The body's text, gunzipped when it starts like gzip."""
    if body[:2] == GZIP_MAGIC:
        return gzip.decompress(body).decode("utf8"), True
    return body.decode("utf8", "replace"), False


def exception_of(err):
    """An exception as JSON."""
    args = []
    for arg in getattr(err, "args", ()):
        try:
            json.dumps(arg)
            args.append(arg)
        except (TypeError, ValueError):
            args.append(repr(arg))
    return {"type": type(err).__name__, "repr": repr(err), "args": args}


class Recording:
    """Mixin for aio-pika RPC classes: keeps each reply's raw body and
    properties by correlation id, for the test to look at."""

    replies = {}
    # The call being made in this task: create_future writes its
    # correlation id into the dict the caller put here.
    current = contextvars.ContextVar("current")

    async def deserialize_message(self, message):
        if message.correlation_id is not None and message.type != "call":
            text, zipped = unzip(message.body)
            Recording.replies[message.correlation_id] = {
                "raw": text, "gzipped": zipped, "props": props_of(message)}
        return await super().deserialize_message(message)

    def create_future(self):
        future, correlation_id = super().create_future()
        holder = Recording.current.get(None)
        if holder is not None:
            holder["id"] = correlation_id
        return future, correlation_id


class LibRPC(Recording, JSONGzipRPC):
    """The library's RPC client, recording replies."""


class PlainRPC(Recording, JsonRPC):
    """aio-pika's JSON RPC client, recording replies."""


class PikaClient:
    """The seed's test/integration/helpers rpc_client and queue_client,
    with pika's blocking connection, on a thread of its own."""

    def __init__(self, zipped):
        self.zipped = zipped
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.connection = None

    def _connect(self):
        if self.connection is None:
            params = pika.ConnectionParameters(
                host=compat.HOST, port=compat.PORT,
                virtual_host=compat.VHOST,
                credentials=pika.PlainCredentials(compat.USER, compat.PASSWORD))
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
            result = self.channel.queue_declare(
                queue="", exclusive=True, auto_delete=True)
            self.reply_queue = result.method.queue
            self.replies = {}
            self.channel.basic_consume(
                queue=self.reply_queue, auto_ack=True,
                on_message_callback=self._on_reply)

    def _on_reply(self, _channel, _method, props, body):
        self.replies[props.correlation_id] = (props, body)

    def _encode(self, body_text):
        raw = body_text.encode("utf8")
        if self.zipped:
            return gzip.compress(raw), "application/octet-stream"
        return raw, "application/json"

    def _call(self, route, body_text, timeout):
        self._connect()
        correlation_id = str(uuid.uuid4())
        body, content_type = self._encode(body_text)
        # The seed's helper sends no content type; pika-json says JSON.
        props = pika.BasicProperties(
            reply_to=self.reply_queue, correlation_id=correlation_id,
            content_type=None if self.zipped else content_type)
        self.channel.basic_publish(exchange="", routing_key=route,
                                   properties=props, body=body)
        waited = 0.0
        while correlation_id not in self.replies:
            if waited >= timeout:
                raise TimeoutError(f"no reply from {route} in {timeout} s")
            self.connection.process_data_events(time_limit=0.05)
            waited += 0.05
        reply_props, reply = self.replies.pop(correlation_id)
        text, zipped = unzip(reply)
        return {"ok": True, "result": json.loads(text), "raw": text,
                "gzipped": zipped, "props": props_of(reply_props)}

    def _publish(self, route, body_text):
        self._connect()
        body, content_type = self._encode(body_text)
        self.channel.basic_publish(
            exchange="", routing_key=route, body=body,
            properties=pika.BasicProperties(
                delivery_mode=2,
                content_type=None if self.zipped else content_type))
        return {"ok": True, "returned": False}

    async def call(self, route, body_text, timeout):
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._call, route, body_text, timeout)

    async def publish(self, route, body_text):
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._publish, route, body_text)


class Driver:
    """Runs the commands."""

    def __init__(self):
        self.connection = None
        self.rpc = {}
        self.masters = {}
        self.pika = {"pika": PikaClient(True), "pika-json": PikaClient(False)}

    async def setup(self):
        self.connection = await compat.connect()
        channel = await self.connection.channel()
        self.rpc["lib"] = await LibRPC.create(channel)
        self.rpc["aiojson"] = await PlainRPC.create(channel)
        self.masters["lib"] = JSONGzipMaster(channel)
        self.masters["aiojson"] = JsonMaster(channel)

    async def call(self, cmd):
        client, route = cmd["client"], cmd["route"]
        timeout = cmd.get("timeout", 10)
        if client in self.pika:
            body = cmd.get("body")
            if body is None:
                body = json.dumps({"data": cmd.get("data")})
            try:
                return await self.pika[client].call(route, body, timeout)
            except Exception as err:  # pylint: disable=broad-except
                return {"ok": False, "exception": exception_of(err)}
        rpc = self.rpc[client]
        holder = {}
        Recording.current.set(holder)
        try:
            result = await asyncio.wait_for(
                rpc.call(route, kwargs={"data": cmd.get("data")},
                         expiration=cmd.get("expiration")), timeout)
            out = {"ok": True, "result": result}
        except Exception as err:  # pylint: disable=broad-except
            out = {"ok": False, "exception": exception_of(err)}
        reply = Recording.replies.pop(holder.get("id"), None)
        if reply is not None and cmd.get("details", True):
            out.update(reply)
        return out

    async def publish(self, cmd):
        client, route = cmd["client"], cmd["route"]
        if client in self.pika:
            body = cmd.get("body")
            if body is None:
                body = json.dumps({"data": cmd.get("data")})
            return await self.pika[client].publish(route, body)
        try:
            confirmation = await self.masters[client].create_task(
                route, kwargs={"data": cmd.get("data")})
        except Exception as err:  # pylint: disable=broad-except
            return {"ok": False, "exception": exception_of(err)}
        # aiormq confirms a message the broker returned (no such queue) with
        # the returned message instead of an ack; Master only logs it.
        return {"ok": True, "returned": isinstance(
            confirmation, aiormq.abc.DeliveredMessage)}

    async def many(self, one, cmd):
        limit = asyncio.Semaphore(cmd.get("concurrency", 16))

        async def run(item):
            async with limit:
                sub = dict(cmd, data=item, details=False)
                return await one(sub)

        return {"results": await asyncio.gather(
            *(run(item) for item in cmd["items"]))}

    async def run(self, cmd):
        op = cmd["op"]
        if op == "call":
            return await self.call(cmd)
        if op == "calls":
            return await self.many(self.call, cmd)
        if op == "publish":
            return await self.publish(cmd)
        if op == "publishes":
            return await self.many(self.publish, cmd)
        return {"ok": False, "exception": {"type": "UnknownOp", "repr": op,
                                           "args": [op]}}


async def main():
    """Answer commands until stdin closes."""
    driver = Driver()
    await driver.setup()
    sys.stdout.write(json.dumps({"event": "ready"}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        answer = await driver.run(json.loads(line))
        sys.stdout.write(json.dumps(answer, default=repr) + "\n")
        sys.stdout.flush()
    await driver.connection.close()


if __name__ == "__main__":
    asyncio.run(main())
