"""Bodies that flow in chunks: a request body read as it arrives, a response written as it goes.

A handler's :meth:`~.handlers.Handler.serve` gets a :class:`RequestBody` and a
:class:`Responder`. Each transport supplies its own:

- long-poll: the body is whole (it came in the ``message/http`` envelope) and the responder
  buffers (:class:`BufferedResponder`), because the reply is one ``Content-Length`` message;
- WebSocket: streamed request bodies arrive as ``body`` frames, acknowledged with ``window``
  frames as they are read, and a responder that streams sends ``response-start``, ``body`` and
  ``end`` frames within the gateway's flow-control window;
- PTTH: the body is read from the socket as the handler asks for it, and a streamed response is
  written with the chunked coding (or the application's ``Content-Length``).

The contract of a responder: either one :meth:`Responder.send` (a whole response), or
:meth:`Responder.start`, any number of :meth:`Responder.write`, then :meth:`Responder.end`.
``streaming`` says whether ``start``/``write`` really stream; handlers buffer otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from .envelope import AppResponse

__all__ = ["BufferedResponder", "RequestBody", "Responder"]

Pull = Callable[[], Awaitable[tuple[bytes, bool]]]


class RequestBody:
    """A request body read chunk by chunk: ``await body.read()`` until it returns ``b""``.

    ``pull`` returns ``(chunk, last)``; ``last`` is true with (or after) the final chunk.
    ``length`` is the declared ``Content-Length``, when there is one. ``streamed`` is false for
    a body that was delivered whole (:meth:`whole`).
    """

    def __init__(self, pull: Pull, *, length: int | None = None, streamed: bool = True) -> None:
        self._pull = pull
        self.length = length
        self.streamed = streamed
        self.complete = False
        self.received = 0

    @classmethod
    def whole(cls, data: bytes) -> RequestBody:
        """A body that is already complete (one chunk)."""

        async def pull() -> tuple[bytes, bool]:
            return data, True

        return cls(pull, length=len(data), streamed=False)

    async def read(self) -> bytes:
        """The next chunk of the body; ``b""`` once it is complete."""
        while not self.complete:
            chunk, last = await self._pull()
            self.complete = last
            if chunk:
                self.received += len(chunk)
                return chunk
        return b""

    async def read_all(self) -> bytes:
        """The rest of the body, joined."""
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def drain(self) -> None:
        """Read and drop the rest of the body (the transport needs it consumed)."""
        while await self.read():
            pass

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk


class Responder:
    """Where a handler writes its response (see the module docstring for the contract)."""

    #: True if :meth:`start` / :meth:`write` reach the requestor before the response ends.
    streaming = False
    #: Bodies larger than this are worth streaming (``None``: never stream).
    stream_threshold: int | None = None

    def __init__(self) -> None:
        self.status: int | None = None
        self.started = False
        self.finished = False

    async def send(self, response: AppResponse) -> None:
        """The whole response at once."""
        raise NotImplementedError

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> None:
        """The status and headers of a response whose body follows with :meth:`write`."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """A piece of the body (waits while the transport's flow-control window is full)."""
        raise NotImplementedError

    async def end(self) -> None:
        """The body is complete."""
        raise NotImplementedError


class BufferedResponder(Responder):
    """Collects the response whole, for transports that need whole messages (long-poll)."""

    def __init__(self) -> None:
        super().__init__()
        self._head: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self._chunks: list[bytes] = []
        self.response: AppResponse | None = None

    async def send(self, response: AppResponse) -> None:
        self.status = response.status
        self.started = self.finished = True
        self.response = response

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> None:
        self.status = status
        self.started = True
        self._head = (status, headers, reason)

    async def write(self, data: bytes) -> None:
        self._chunks.append(data)

    async def end(self) -> None:
        assert self._head is not None
        status, headers, reason = self._head
        self.response = AppResponse(status, headers, b"".join(self._chunks), reason)
        self._chunks = []
        self.finished = True
