"""The resume protocol, sans-I/O: two ``StreamEnd`` instances shuttling bytes, with breaks."""

from __future__ import annotations

import random

import pytest

from relay.config import ConfigError, config_from_mapping
from relay.protocols import relay_v1
from relay.protocols.resume import (
    ACK_EVERY,
    Accept,
    CloseReceived,
    DataReceived,
    EofReceived,
    OpenRequest,
    ResumeError,
    ResumeRequest,
    StreamEnd,
    decode_accept,
    decode_request,
    encode_accept,
    encode_open,
    encode_resume,
    stream_token,
)
from tests.conftest import core_mapping, edge_mapping, hop_node


def payload(received: list[object]) -> bytes:
    return b"".join(e.data for e in received if isinstance(e, DataReceived))


def test_features_round_trip_through_the_relay_header() -> None:
    resume = ResumeRequest(b"i" * 16, b"t" * 32, 12345)
    request = relay_v1.Request(username="edge-1", password="pw", resume=encode_resume(resume))
    parsed = relay_v1.parse_request(relay_v1.encode_request(request) + b"rest")
    assert parsed is not None
    decoded, rest = parsed
    assert rest == b"rest"
    assert decode_request(decoded.resume or b"") == resume
    assert decode_request(encode_open(77)) == OpenRequest(early=77)

    accept = Accept(b"s" * 16, b"k" * 32, 99)
    answer = relay_v1.parse_response(relay_v1.encode_response(0, encode_accept(accept)) + b"x")
    assert answer is not None
    assert decode_accept(answer[0].resume or b"") == accept
    assert answer[1] == b"x"


def test_a_peer_without_the_feature_parses_it_as_unknown() -> None:
    """What a plain gost peer sees: a TLV of a type it skips; our answer without it is a
    plain OK."""
    request = relay_v1.Request(username="u", password="p", resume=encode_open(0))
    raw = relay_v1.encode_request(request)
    # Strip our feature as gost would ignore it: the rest of the header still parses.
    parsed = relay_v1.parse_request(raw)
    assert parsed is not None and parsed[0].username == "u"
    plain = relay_v1.parse_response(relay_v1.encode_response(0))
    assert plain is not None and plain[0].resume is None


def test_bad_features_are_refused() -> None:
    with pytest.raises(ResumeError):
        decode_request(b"\x02short")
    with pytest.raises(ResumeError):
        decode_request(b"\x09" + b"\0" * 4)
    with pytest.raises(ResumeError):
        decode_accept(b"\0" * 10)


def test_token_is_bound_to_secret_stream_and_user() -> None:
    token = stream_token(b"secret", b"i" * 16, "edge-1")
    assert token == stream_token(b"secret", b"i" * 16, "edge-1")
    assert token != stream_token(b"secret", b"i" * 16, "edge-2")
    assert token != stream_token(b"other", b"i" * 16, "edge-1")
    assert token != stream_token(b"secret", b"j" * 16, "edge-1")


def test_stream_survives_breaks_with_every_byte_once_and_in_order() -> None:
    """Chunks flow from a sender to a receiver over a 'tunnel' that breaks at random points,
    mid-frame included; after each break the receiver says what it got and the sender
    replays from there."""
    rng = random.Random(7)
    sender, receiver = StreamEnd(), StreamEnd()
    sent = b""
    got: list[object] = []
    in_flight = b""
    for index in range(400):
        chunk = bytes([index % 251]) * rng.randrange(1, 3000)
        sent += chunk
        in_flight += sender.send(chunk)
        if rng.random() < 0.1:
            # Break: part of what was in flight arrives (cut anywhere), the rest is lost.
            delivered = in_flight[: rng.randrange(len(in_flight) + 1)]
            events, ack = receiver.receive(delivered)
            got += events
            sender.receive(ack)
            receiver.lost()
            sender.lost()
            in_flight = sender.replay(receiver.received)
        elif rng.random() < 0.5:
            events, ack = receiver.receive(in_flight)
            got += events
            in_flight = b""
            sender.receive(ack)
    events, _ = receiver.receive(in_flight)
    got += events
    assert payload(got) == sent
    assert receiver.received == len(sent)
    # Acknowledgements kept the sender's replay buffer small.
    assert sender.buffer.size < 4 * ACK_EVERY + 3000


def test_eof_and_close_are_replayed_after_a_break() -> None:
    sender, receiver = StreamEnd(), StreamEnd()
    sender.send(b"tail")
    sender.send_eof()
    sender.send_close()
    replay = sender.replay(0)
    events, _ = receiver.receive(replay)
    assert events == [DataReceived(b"tail"), EofReceived(), CloseReceived()]


def test_offsets_outside_the_buffer_are_refused() -> None:
    sender = StreamEnd()
    sender.send(b"x" * 100)
    sender.buffer.ack(60)
    with pytest.raises(ResumeError):
        sender.replay(10)  # acknowledged already: no longer held
    with pytest.raises(ResumeError):
        sender.replay(101)  # never sent
    with pytest.raises(ResumeError):
        sender.buffer.ack(500)
    assert sender.replay(60).endswith(b"x" * 40)


def test_oversized_and_unknown_frames_are_errors() -> None:
    with pytest.raises(ResumeError):
        StreamEnd().receive(b"\x00\xff\xff\xff\xff")
    with pytest.raises(ResumeError):
        StreamEnd().receive(b"\x09\x00\x00\x00\x00")


# --- config ---------------------------------------------------------------------------------


def test_resume_options_are_read_and_checked() -> None:
    core = core_mapping("tcp", 8000)
    core["services"][0]["handler"]["metadata"] = {"resumeWindow": "5s", "resumeBuffer": 262144}
    handler = config_from_mapping(core).services[0].handler
    assert (handler.resume.enabled, handler.resume.window, handler.resume.buffer) == (
        True,
        5.0,
        262144,
    )
    core["services"][0]["handler"]["metadata"] = {"resumeWindow": "0s"}
    assert not config_from_mapping(core).services[0].handler.resume.enabled

    node = hop_node("core-1", "tcp", 9000)
    node["connector"]["metadata"] = {"resume": True, "resumeWindow": "10s"}
    connector = config_from_mapping(edge_mapping([node])).chains[0].hops[0].nodes[0].connector
    assert connector is not None and connector.resume is not None
    assert connector.resume.window == 10.0

    node["connector"]["metadata"] = {"resume": "yes", "resumeBuffer": 10, "bogus": 1}
    with pytest.raises(ConfigError) as err:
        config_from_mapping(edge_mapping([node]))
    text = str(err.value)
    assert "connector.metadata.resume: expected true or false" in text
    assert "connector.metadata.resumeBuffer: must be at least 65536" in text
    assert "connector.metadata.bogus: unknown key" in text

    edge = edge_mapping([hop_node("core-1", "tcp", 9000)])
    edge["services"][0]["handler"]["metadata"] = {"resumeWindow": "5s"}
    with pytest.raises(ConfigError, match="resume options belong to a relay handler"):
        config_from_mapping(edge)


def test_resume_options_render_back_to_the_same_config() -> None:
    from relay.config.render import config_to_mapping

    core = core_mapping("tcp", 8000)
    core["services"][0]["handler"]["metadata"] = {"resumeWindow": "45s", "resumeBuffer": 131072}
    node = hop_node("core-1", "tcp", 9000)
    node["connector"]["metadata"] = {"resume": True, "resumeWindow": "20s"}
    edge = edge_mapping([node])
    for mapping in (core, edge):
        config = config_from_mapping(mapping)
        assert config_from_mapping(config_to_mapping(config)) == config
