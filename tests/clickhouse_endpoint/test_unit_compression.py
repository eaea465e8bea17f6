"""Body compression framing, checked against the decoders clickhouse-connect itself uses."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame
import pytest
import zstandard

from services.clickhouse_endpoint.compression import (
    choose_response_encoding,
    make_decoder,
    make_encoder,
)
from services.clickhouse_endpoint.errors import ClickHouseError

pytestmark = pytest.mark.unit

BLOCKS = [
    b"INSERT INTO t FORMAT TSV\n",
    b"1\ta\n" * 1000,
    b"",
    b"2\tb\n" * 10,
    bytes(range(256)) * 50,
]


def _frames(encoding: str) -> bytes:
    """Each block compressed separately and concatenated, the way clickhouse-connect sends inserts."""
    if encoding == "lz4":
        return b"".join(lz4.frame.compress(b) for b in BLOCKS)
    if encoding == "zstd":
        return b"".join(zstandard.ZstdCompressor().compress(b) for b in BLOCKS)
    if encoding == "gzip":
        return b"".join(gzip.compress(b) for b in BLOCKS)
    if encoding == "deflate":
        return zlib.compress(b"".join(BLOCKS))
    return b"".join(BLOCKS)


def _decode(encoding: str, payload: bytes, piece: int) -> bytes:
    decoder = make_decoder(encoding)
    out = [decoder.decompress(payload[i : i + piece]) for i in range(0, len(payload), piece)]
    out.append(decoder.finish())
    return b"".join(out)


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate", "identity"])
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_request_decoders_read_every_frame_whatever_the_chunking(encoding: str, piece: int) -> None:
    assert _decode(encoding, _frames(encoding), piece) == b"".join(BLOCKS)


@pytest.mark.parametrize("encoding", ["lz4", "gzip"])
def test_truncated_request_body_is_an_error(encoding: str) -> None:
    payload = _frames(encoding)[:-5]
    with pytest.raises(ClickHouseError) as excinfo:
        _decode(encoding, payload, 1000)
    assert excinfo.value.code == 271


def test_corrupt_lz4_is_an_error() -> None:
    with pytest.raises(ClickHouseError) as excinfo:
        _decode("lz4", b"\x04\x22\x4d\x18garbage-garbage", 100)
    assert excinfo.value.code == 271


def test_unknown_request_encoding() -> None:
    with pytest.raises(ClickHouseError) as excinfo:
        make_decoder("br")
    assert excinfo.value.code == 89


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_response_encoder_emits_one_stream_decodable_incrementally(encoding: str) -> None:
    from clickhouse_connect.driver.compression import _lz4_decompressor, _zstd_decompressor

    encoder = make_encoder(encoding)
    pieces = [encoder.compress(block) for block in BLOCKS] + [encoder.finish()]
    whole = b"".join(pieces)
    if encoding == "lz4":
        # clickhouse-connect keeps ONE LZ4FrameDecompressor for the whole response.
        decoder = _lz4_decompressor()
        assert decoder.decompress(whole) == b"".join(BLOCKS)
        assert decoder.eof
    elif encoding == "zstd":
        decoder = _zstd_decompressor()
        assert decoder.decompress(whole) == b"".join(BLOCKS)
    elif encoding == "gzip":
        assert gzip.decompress(whole) == b"".join(BLOCKS)
    else:
        assert zlib.decompress(whole) == b"".join(BLOCKS)


# lz4 is left out on purpose: python-lz4's incremental decompressor itself holds back part of
# a highly compressible block until more input arrives, whatever the encoder does.
@pytest.mark.parametrize("encoding", ["zstd", "gzip", "deflate"])
def test_each_flushed_piece_is_decodable_on_arrival(encoding: str) -> None:
    """Streaming needs every chunk decodable without waiting for the next one."""
    encoder = make_encoder(encoding)
    if encoding == "zstd":
        step = zstandard.ZstdDecompressor().decompressobj().decompress
    else:
        step = zlib.decompressobj(31 if encoding == "gzip" else 15).decompress
    for block in BLOCKS:
        assert step(encoder.compress(block)) == block


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("lz4,zstd,gzip,deflate", "zstd"),
        ("lz4", "lz4"),
        ("gzip, deflate, br", "gzip"),
        ("deflate;q=0.5", "deflate"),
        ("GZIP", "gzip"),
        ("br", None),
    ],
)
def test_choose_response_encoding_follows_clickhouse_preference(
    accept: str | None, expected: str | None
) -> None:
    assert choose_response_encoding(accept) == expected
