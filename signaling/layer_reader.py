"""One reader of the channel layer per process, for every consumer in it.

The channel layer carries fan-out and control only (hub.py carries the frames): ringing every
device of a user, a call's end to the devices that only rang, sign-out. Each consumer used to
wait on the layer itself (`channel_layer.receive`): with channels-redis 4.3 an idle socket then
held a task of its own, two more inside `receive` (its lock, its buffer), an `asyncio.wait`, and
a buffer queue, about 8 KiB of the 38 KiB an idle socket cost (tracemalloc, issue 8), to wait for
messages that come a few times per call. Here one task per event loop receives everything for
the process's channels (channels-redis's process-local `specific.<prefix>!` channels, which is
what its own `receive` reads under its lock) and hands each message to its consumer, in order.

A consumer fails as it did when it read the layer itself: when the layer fails (Redis went away,
every consumer then) or one of its own handlers raises (that consumer), it ends with that error,
its device's grace window starts, and Daphne closes the socket (1011): the page reconnects,
backing off, and resumes.
It reads channels-redis's RedisChannelLayer (the one Traverse configures; system check
signaling.E004).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, Protocol

logger = logging.getLogger(__name__)

WAKE = "layer.reader.wake"  # wakes the reader after the last consumer went (see stop)


class LayerListener(Protocol):
    async def layer_event(self, message: dict) -> None: ...

    def layer_failed(self, exc: BaseException) -> None: ...


class LayerReader:
    def __init__(self, layer: Any, loop: asyncio.AbstractEventLoop):
        self.layer, self.loop = layer, loop
        self.listeners: dict[str, LayerListener] = {}
        self.task: asyncio.Task | None = None

    def listen(self, channel: str, listener: LayerListener) -> None:
        self.listeners[channel] = listener
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._read(self.layer.non_local_name(channel)))

    def forget(self, channel: str, listener: LayerListener) -> None:
        if self.listeners.get(channel) is listener:
            del self.listeners[channel]

    async def stop(self, channel: str, listener: LayerListener) -> None:
        """That consumer is done. After the last one the reader ends too, woken by a message of
        its own rather than cancelled: a cancel that reached redis-py inside a blocking read
        was lost now and then (the read retried, and `receive_single` waits until a message
        comes), and a test's event loop then never finished closing."""
        self.forget(channel, listener)
        if not self.listeners and self.task is not None and not self.task.done():
            with contextlib.suppress(Exception):  # a layer that is gone has ended the reader
                await self.layer.send(channel, {"type": WAKE})

    async def _read(self, process_channel: str) -> None:
        try:
            while True:
                to, message = await self.layer.receive_single(process_channel)
                if not self.listeners:
                    return  # woken by stop(): the next listen() starts another reader
                for channel in to if isinstance(to, list) else [to]:
                    listener = self.listeners.get(channel)
                    if listener is None:
                        continue  # its socket went meanwhile
                    try:
                        await listener.layer_event(message)
                    except Exception as exc:  # that consumer fails; the others hear theirs
                        self.forget(channel, listener)
                        listener.layer_failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("signaling: channel layer lost (%s): closing its sockets", exc)
            lost, self.listeners = self.listeners, {}
            for listener in lost.values():
                listener.layer_failed(exc)


_readers: weakref.WeakKeyDictionary[Any, LayerReader] = weakref.WeakKeyDictionary()


def reader_for(layer: Any) -> LayerReader:
    """This event loop's reader of `layer`."""
    loop = asyncio.get_running_loop()
    reader = _readers.get(layer)
    if reader is None or reader.loop is not loop:
        reader = _readers[layer] = LayerReader(layer, loop)
    return reader
