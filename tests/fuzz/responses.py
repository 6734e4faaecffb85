"""What the relay sent a client, parsed into responses with httptools."""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    #: The response ended by its own framing (length or last chunk), not by a broken connection.
    complete: bool = False


class _Collector:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.answers.append(Answer())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True


def first_answer(data: bytes) -> Answer | None:
    """The first response in ``data``, whatever bytes follow it (None if its head is bad)."""
    collector = _Collector()
    try:
        collector.parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return collector.answers[0] if collector.answers and collector.answers[0].status else None


def parse_answers(data: bytes) -> list[Answer]:
    """The responses in ``data``, in order; the last may be incomplete (a broken stream).
    Raises AssertionError when ``data`` is not HTTP/1.1 responses."""
    collector = _Collector()
    try:
        collector.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise AssertionError(
            f"the relay sent bytes that are not HTTP: {exc}: {data[:300]!r}"
        ) from None
    return collector.answers
