"""HTTP body compression in both directions, incremental so large bodies never sit in memory.

Requests: clickhouse-connect compresses each insert block as its own frame (lz4, zstd) and
sends the frames back to back in one chunked body, so the decoders here keep going across
frame (and gzip member) boundaries instead of stopping after the first one.

Responses: the client keeps a single decompressor for the whole body (for lz4 and zstd it
does not restart after a frame ends), so the encoders emit exactly one frame/stream, flushed
after every chunk so streamed results reach the client as they are produced.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import lz4.frame
import zstandard

from .errors import ClickHouseError

# ClickHouse's own preference order (chooseHTTPCompressionMethod); brotli is not available here.
RESPONSE_PREFERENCE = ("zstd", "lz4", "gzip", "deflate")
REQUEST_ENCODINGS = ("lz4", "zstd", "gzip", "deflate", "identity")


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """Return any remaining output; raise if the input stopped inside a frame."""
        ...


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes:
        """Compress and flush, so the returned bytes decode to all input given so far."""
        ...

    def finish(self) -> bytes: ...


def _truncated(encoding: str) -> ClickHouseError:
    return ClickHouseError(
        271, f"Cannot decompress request body: {encoding} data is truncated", "CANNOT_DECOMPRESS"
    )


def _corrupt(encoding: str, exc: Exception) -> ClickHouseError:
    return ClickHouseError(
        271, f"Cannot decompress request body as {encoding}: {exc}", "CANNOT_DECOMPRESS"
    )


class _IdentityDecoder:
    def decompress(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _Lz4FramesDecoder:
    def __init__(self) -> None:
        self._decoder = lz4.frame.LZ4FrameDecompressor()
        self._mid_frame = False

    def decompress(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while data:
                self._mid_frame = True
                out.append(self._decoder.decompress(data))
                if not self._decoder.eof:
                    break
                data = self._decoder.unused_data or b""
                self._decoder = lz4.frame.LZ4FrameDecompressor()
                self._mid_frame = False
        except RuntimeError as exc:
            raise _corrupt("lz4", exc) from None
        return b"".join(out)

    def finish(self) -> bytes:
        if self._mid_frame:
            raise _truncated("lz4")
        return b""


class _ZstdFramesDecoder:
    def __init__(self) -> None:
        self._decoder = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            out = self._decoder.decompress(data)
        except zstandard.ZstdError as exc:
            raise _corrupt("zstd", exc) from None
        # zstandard cannot tell us whether a frame is open; a frame that never finished simply
        # produced nothing, which the caller's format parser reports as truncated data.
        return out

    def finish(self) -> bytes:
        return b""


class _ZlibMembersDecoder:
    """gzip (possibly several concatenated members) or zlib-wrapped deflate."""

    def __init__(self, wbits: int, encoding: str) -> None:
        self._wbits = wbits
        self._encoding = encoding
        self._decoder = zlib.decompressobj(wbits)
        self._mid_member = False

    def decompress(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while data:
                self._mid_member = True
                out.append(self._decoder.decompress(data))
                if not self._decoder.eof:
                    break
                data = self._decoder.unused_data
                self._decoder = zlib.decompressobj(self._wbits)
                self._mid_member = False
        except zlib.error as exc:
            raise _corrupt(self._encoding, exc) from None
        return b"".join(out)

    def finish(self) -> bytes:
        if self._mid_member:
            raise _truncated(self._encoding)
        return b""


def make_decoder(content_encoding: str | None) -> Decoder:
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity", "none"):
        return _IdentityDecoder()
    if encoding == "lz4":
        return _Lz4FramesDecoder()
    if encoding == "zstd":
        return _ZstdFramesDecoder()
    if encoding in ("gzip", "x-gzip"):
        return _ZlibMembersDecoder(31, "gzip")
    if encoding == "deflate":
        return _ZlibMembersDecoder(15, "deflate")
    raise ClickHouseError(
        89, f"Unknown compression method: {content_encoding}", "UNKNOWN_COMPRESSION_METHOD"
    )


class _Lz4StreamEncoder:
    def __init__(self) -> None:
        self._encoder = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        self._started = False

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._encoder.begin()

    def compress(self, data: bytes) -> bytes:
        header = self._begin()
        return header + self._encoder.compress(data) if data else header

    def finish(self) -> bytes:
        return self._begin() + self._encoder.flush()


class _ZstdStreamEncoder:
    def __init__(self) -> None:
        self._encoder = zstandard.ZstdCompressor(level=3).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._encoder.compress(data) + self._encoder.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._encoder.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _ZlibStreamEncoder:
    def __init__(self, wbits: int) -> None:
        self._encoder = zlib.compressobj(level=3, wbits=wbits)

    def compress(self, data: bytes) -> bytes:
        return self._encoder.compress(data) + self._encoder.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._encoder.flush(zlib.Z_FINISH)


def make_encoder(encoding: str) -> Encoder:
    if encoding == "lz4":
        return _Lz4StreamEncoder()
    if encoding == "zstd":
        return _ZstdStreamEncoder()
    if encoding == "gzip":
        return _ZlibStreamEncoder(31)
    if encoding == "deflate":
        return _ZlibStreamEncoder(15)
    raise ValueError(f"unsupported response encoding {encoding!r}")


def choose_response_encoding(accept_encoding: str | None) -> str | None:
    """Pick the response encoding the way ClickHouse does: by its preference, not the client's.

    Tokens are matched exactly (``x;q=0`` weights are accepted but ignored, like ClickHouse).
    """
    if not accept_encoding:
        return None
    offered = set()
    for part in accept_encoding.split(","):
        name = part.split(";", 1)[0].strip().lower()
        if name:
            offered.add(name)
    for encoding in RESPONSE_PREFERENCE:
        if encoding in offered:
            return encoding
    return None
