"""Client-side, streaming, authenticated encryption of every object (AES-256-GCM in independent chunks).

:class:`EncryptedStorage` wraps any storage: the inner storage only ever sees ciphertext. Object format
(version 1; all integers big-endian)::

    header  = magic "FMRBKENC" (8 bytes) | version 0x01 (1) | chunk_size (uint32, plaintext bytes per chunk)
              | nonce_prefix (8 random bytes, new for every object) | key_len (uint16) | object key (UTF-8)
    chunk i = AES-256-GCM(key, nonce = nonce_prefix | uint32(i), plaintext_i, aad = header | final_i)
              → ciphertext_i followed by its 16-byte tag

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes (1 MiB); the last holds 0..chunk_size
bytes and is the only one with ``final_i = 0x01`` (all others ``0x00``). An empty object is a header and one
final chunk of 16 bytes. Because the header (with the object key) is authenticated with every chunk, and the
chunk number is in the nonce, decryption detects: a wrong key, any flipped byte, reordered or dropped chunks,
truncation (the new last chunk is not flagged final), appended data, and an object copied to another key.

Sizes: ``stat()`` and ``list()`` report the *plaintext* size, computed from the stored size (exact for objects
written with the storage's chunk size, which is always 1 MiB in version 1); the inner storage's sizes are the
stored (ciphertext) sizes = plaintext + header + 16 bytes per chunk.

Key: 32 random bytes, given as 64 hex digits or as standard base64 (44 characters) — both are accepted — in an
environment variable (``encryption.key_env``) or in the password of an Airflow connection
(``encryption.key_conn_id``). ``key_fingerprint`` (first 16 hex digits of SHA-256 of the key) identifies a key
in logs and manifests; the key itself is never logged or put in a message.

Manual restore without the library's storage layer::

    python -m backups.storage.crypto genkey                                  # a new key (hex)
    python -m backups.storage.crypto decrypt --key-env BACKUP_KEY < obj.enc > obj
    python -m backups.storage.crypto encrypt --key-env BACKUP_KEY --object-key data/x < x > x.enc

``decrypt`` prints the object key from the header on stderr; ``--expect-key KEY`` makes it refuse an object
written under another key. Exit status 0 = authentic and complete, 8 = wrong key or corrupted/truncated data
(discard the output: chunks before a corrupted one may already have been written).

Wrong key or damaged object? AES-GCM cannot tell the two apart on one object, so the storage decides with the
others: the key is *proven* once any chunk of this storage decrypted (a storage check, a read; not an object
this process wrote, nor a lock), or by a probe that decrypts the first chunk of up to :data:`PROBES` other
objects — the 4 newest manifests, then the 4 smallest data objects, then older manifests
(:meth:`EncryptedStorage.key_proven`). With the key proven, an object that fails authentication or has a bad
header is damage: :class:`~backups.errors.IntegrityError` (exit 4), one object, like a flipped byte on a plain
storage. An object whose header names another key (swapped or renamed) is always damage. Only when no object
tried decrypts is it the key: :class:`~backups.errors.EncryptionError` (exit 8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import os
import secrets
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import BackupError, EncryptionError, IntegrityError, ObjectExistsError
from .base import CHUNK, ObjectInfo, Storage, exists_error, same_content

if TYPE_CHECKING:
    from ..config import EncryptionConfig
    from . import Resolver

MAGIC = b"FMRBKENC"
VERSION = 1
TAG = 16
_FIXED = struct.Struct(">8sBI8sH")  # magic, version, chunk_size, nonce_prefix, key_len  (23 bytes)
MAX_CHUNK = 64 << 20
UNPROVEN = ("locks/",)  #: objects any run writes (locks): reading one back proves nothing about the key
PROBES = 8  #: objects a key probe tries to decrypt before it calls the key wrong (see ``_candidates``)


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def parse_key(text: str, source: str) -> bytes:
    """A 32-byte key from 64 hex digits or base64; ``source`` names where it came from (for the message)."""
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise EncryptionError(f"{source} does not hold a 32-byte key (expected 64 hex digits or base64 of 32 bytes)",
                              hint="generate one with: python -m backups.storage.crypto genkey")
    return key


def load_key(enc_cfg: EncryptionConfig, resolver: Resolver, storage_name: str) -> bytes:
    """The key for storage ``storage_name`` from ``key_env`` or from the password of connection ``key_conn_id``."""
    if enc_cfg.key_env:
        value = os.environ.get(enc_cfg.key_env, "")
        if not value.strip():
            raise EncryptionError(f"storage {storage_name}: encryption key variable {enc_cfg.key_env} is not set",
                                  hint=f"export {enc_cfg.key_env}=<the 64-hex-digit key that encrypted this repository> "
                                  "(a new repository: python -m backups.storage.crypto genkey)")
        return parse_key(value, f"environment variable {enc_cfg.key_env}")
    assert enc_cfg.key_conn_id  # the config model requires exactly one of key_env / key_conn_id
    value = resolver.secret(enc_cfg.key_conn_id) or ""
    if not value.strip():
        raise EncryptionError(f"storage {storage_name}: Airflow connection {enc_cfg.key_conn_id} has no password",
                              hint=f"set the password of connection {enc_cfg.key_conn_id} to the 64-hex-digit key")
    return parse_key(value, f"the password of Airflow connection {enc_cfg.key_conn_id}")


def make_header(object_key: str, chunk_size: int) -> bytes:
    k = object_key.encode()
    return _FIXED.pack(MAGIC, VERSION, chunk_size, secrets.token_bytes(8), len(k)) + k


def _bad(key: str, where: str, fp: str | None) -> EncryptionError:
    return EncryptionError(f"cannot decrypt {key} on {where}: wrong key or corrupted data",
                           hint=f"check that the key (fingerprint {fp}) is the one that encrypted this repository — "
                           "manifests record the fingerprint; if it is, the object is damaged: restore from another copy")


class _NotEncrypted(EncryptionError):
    """The object has no encryption header (unencrypted data, or a damaged header)."""


class _Swapped(EncryptionError):
    """The header is valid but names another object key (objects swapped or renamed)."""


def _check_header(header: bytes, key: str, where: str, fp: str | None) -> bytes:
    """Validate a header read for object ``key``; returns it (it is the associated data of every chunk)."""
    if len(header) < _FIXED.size or header[:8] != MAGIC:
        raise _NotEncrypted(f"cannot decrypt {key} on {where}: not an encrypted object (bad header)",
                            hint="the storage holds unencrypted data: remove 'encryption:' for it or use another path")
    _, version, cs, _, klen = _FIXED.unpack_from(header)
    if version != VERSION or not 0 < cs <= MAX_CHUNK or klen != len(header) - _FIXED.size:
        raise _bad(key, where, fp)
    if header[_FIXED.size :] != key.encode():
        raise _Swapped(f"cannot decrypt {key} on {where}: the object was written as another key "
                       "(objects swapped or renamed)", hint="restore it from another copy")
    return header


def _read_exact(src: Any, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        data = src.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


class _Encryptor:
    """Writer: buffers plaintext and emits full chunks; :meth:`finish` emits the final chunk."""

    def __init__(self, raw: Any, aead: Any, header: bytes) -> None:
        self.raw, self.aead, self.header = raw, aead, header
        self.chunk_size = _FIXED.unpack_from(header)[2]
        self.prefix = header[13:21]
        self.buf = bytearray()
        self.index = 0
        self.sha = hashlib.sha256()  # of the plaintext: an existing object is compared by its plaintext
        self.size = 0
        raw.write(header)

    def _emit(self, data: bytes, final: bool) -> None:
        nonce = self.prefix + struct.pack(">I", self.index)
        self.raw.write(self.aead.encrypt(nonce, data, self.header + (b"\x01" if final else b"\x00")))
        self.index += 1

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.buf += data
        while len(self.buf) > self.chunk_size:  # strictly more: the last chunk is always emitted by finish()
            self._emit(bytes(self.buf[: self.chunk_size]), False)
            del self.buf[: self.chunk_size]
        return len(data)

    def finish(self) -> None:
        self._emit(bytes(self.buf), True)
        self.buf = bytearray()

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class _Decryptor:
    """Reader: decrypts chunk after chunk, reading one chunk ahead to know which one is final."""

    def __init__(self, raw: Any, aead: Any, header: bytes, first: int, fail: Any, skip: int = 0,
                 limit: int | None = None, ok: Any = None) -> None:
        self.raw, self.aead, self.header, self.index, self.fail, self.ok = raw, aead, header, first, fail, ok
        self.prefix = header[13:21]
        self.enc_size = _FIXED.unpack_from(header)[2] + TAG
        self.next = _read_exact(raw, self.enc_size)
        self.done = False
        self.buf = b""
        self.skip, self.left = skip, limit

    def _fill(self) -> None:
        cur = self.next
        if not cur:
            if self.index == 0:
                raise self.fail()  # header only: the chunks were cut off
            self.done = True  # a ranged read that starts past the end
            return
        self.next = _read_exact(self.raw, self.enc_size) if len(cur) == self.enc_size else b""
        final = not self.next
        nonce = self.prefix + struct.pack(">I", self.index)
        try:
            plain = self.aead.decrypt(nonce, cur, self.header + (b"\x01" if final else b"\x00"))
        except Exception:  # cryptography.exceptions.InvalidTag, or ValueError for a too-short chunk
            raise self.fail() from None
        if self.ok is not None:
            self.ok()  # an authentic chunk: the key is right
        self.index += 1
        self.done = final
        if self.skip:
            plain, self.skip = plain[self.skip :], max(0, self.skip - len(plain))
        self.buf += plain

    def read(self, n: int = -1) -> bytes:
        want = None if n is None or n < 0 else n
        if self.left is not None:
            want = self.left if want is None else min(want, self.left)
        while not self.done and (want is None or len(self.buf) < want):
            self._fill()
        out = self.buf if want is None else self.buf[:want]
        self.buf = self.buf[len(out) :]
        if self.left is not None:
            self.left -= len(out)
        return out

    def readable(self) -> bool:
        return True


class _KeyState:
    """Whether the key is known right for a storage (shared by an :class:`EncryptedStorage` and its thread twins)."""

    def __init__(self) -> None:
        self.proven = False
        self.probed = False  #: a probe ran and decrypted nothing
        self.written: set[str] = set()  #: keys this process wrote (they decrypt whatever the key): no proof


class EncryptedStorage(Storage):
    """Same interface as the inner storage; objects are encrypted on write and authenticated on read."""

    def __init__(self, inner: Storage, key: bytes, chunk_size: int = CHUNK) -> None:
        self.thread_safe = inner.thread_safe
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise EncryptionError(f"{inner.name}: the encryption key must be 32 bytes (AES-256)")
        self.inner, self.name, self.archive = inner, inner.name, inner.archive
        self.chunk_size = chunk_size
        self.key_fingerprint = fingerprint(key)
        self._aead = AESGCM(key)
        self._key = _KeyState()

    def __repr__(self) -> str:
        return f"EncryptedStorage({self.inner!r}, key_fingerprint={self.key_fingerprint})"

    def describe(self) -> str:
        return f"{self.inner.describe()}, encrypted (AES-256-GCM, key {self.key_fingerprint})"

    # ---- wrong key or damaged object -----------------------------------------------------------------
    def _proof(self, key: str) -> Any:
        """The callback a read of ``key`` calls on an authentic chunk: proof of the key, unless this process wrote
        the object (a lock, a report) — that decrypts with any key, the wrong one included."""
        if key in self._key.written or key.startswith(UNPROVEN):
            return None

        def proved() -> None:
            self._key.proven = True

        return proved

    def key_proven(self, failed: str | None = None) -> bool:
        """True when the key is right: a chunk of this storage decrypted already, or the first chunk of one of
        up to :data:`PROBES` other objects (newest manifests, smallest data objects; ``failed`` excluded)
        decrypts now. False when none does (the key is wrong, or the storage holds nothing else to try)."""
        if self._key.proven:
            return True
        if self._key.probed:
            return False
        self._probe(failed)
        return self._key.proven

    def _candidates(self, failed: str | None) -> Iterator[str]:
        """Keys to probe, lazily: the newest manifests (by modification time), then — listed only if those all
        failed — the smallest data objects, then older manifests. ``failed`` and what this process wrote are
        left out. The probe takes at most :data:`PROBES` of them."""
        skip = {failed, *self._key.written}
        manifests = sorted((o for o in self.inner.list("snapshots/") if o.key not in skip),
                           key=lambda o: (o.mtime or 0.0, o.key), reverse=True)
        yield from (o.key for o in manifests[: PROBES // 2])
        data = sorted((o for o in self.inner.list("data/") if o.key not in skip), key=lambda o: (o.size, o.key))
        yield from (o.key for o in data[: PROBES // 2])
        yield from (o.key for o in manifests[PROBES // 2 :])

    def _probe(self, failed: str | None) -> int:
        """Try to decrypt the first chunk of a few objects; returns how many were tried (0: nothing to try)."""
        tried = 0
        for key in itertools.islice(self._candidates(failed), PROBES):
            tried += 1
            try:
                hlen = _FIXED.size + len(key.encode())
                with self.inner.open_read(key, 0, hlen + 2 * (self.chunk_size + TAG)) as raw:
                    header = _check_header(_read_exact(raw, hlen), key, self.name, self.key_fingerprint)
                    _Decryptor(raw, self._aead, header, 0, lambda k=key: _bad(k, self.name, self.key_fingerprint),
                               limit=1, ok=self._proof(key)).read(1)
            except BackupError:  # this one does not decrypt (or cannot be read): try the next
                continue
            if self._key.proven:
                return tried
        self._key.probed = True
        return tried

    def _damaged(self, key: str, what: str, wrong_key: EncryptionError) -> BackupError:
        """The error for object ``key`` that failed (``what``): damage when the key is proven, else ``wrong_key``."""
        if not self.key_proven(key):
            return wrong_key
        return IntegrityError(f"{key} on {self.name} is damaged: {what} (the key, fingerprint {self.key_fingerprint}, "
                              "is right: it decrypts other data of this storage)",
                              hint="restore from another storage or an older snapshot; "
                              "`backupctl verify --all --read-data` lists every damaged object")

    def _bad(self, key: str) -> BackupError:
        return self._damaged(key, "authenticated decryption failed (altered, truncated or replaced)",
                             _bad(key, self.name, self.key_fingerprint))

    def _header(self, raw: Any, key: str) -> bytes:
        hlen = _FIXED.size + len(key.encode())
        try:
            return _check_header(_read_exact(raw, hlen), key, self.name, self.key_fingerprint)
        except _Swapped:  # a valid object of another key: swapped or renamed, whatever the key
            raise IntegrityError(f"{key} on {self.name} is damaged: it holds the object written as another key "
                                 "(objects swapped or renamed)",
                                 hint="restore from another storage or an older snapshot") from None
        except EncryptionError as exc:
            what = "bad header (not an encrypted object)" if isinstance(exc, _NotEncrypted) else "bad header"
            raise self._damaged(key, what, exc) from None

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        enc: _Encryptor | None = None
        try:
            with self.inner.open_write(key) as raw:
                enc = _Encryptor(raw, self._aead, make_header(key, self.chunk_size))
                yield enc  # type: ignore[misc]
                enc.finish()
            self._key.written.add(key)
        except ObjectExistsError:
            # the ciphertext always differs (a fresh nonce per object): compare the plaintext instead
            if enc is None or not same_content(self, key, enc.sha.hexdigest(), enc.size):
                raise exists_error(self.name, key) from None

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        hlen = _FIXED.size + len(key.encode())
        if not offset and length is None:
            with self.inner.open_read(key) as raw:
                header = self._header(raw, key)
                yield _Decryptor(raw, self._aead, header, 0, lambda: self._bad(key), ok=self._proof(key))  # type: ignore[misc]
            return
        if length == 0:
            yield io.BytesIO(b"")
            return
        with self.inner.open_read(key, 0, hlen) as raw:
            header = self._header(raw, key)
        cs = _FIXED.unpack_from(header)[2]
        first, skip = divmod(offset, cs)
        span = None if length is None else ((offset + length - 1) // cs - first + 2) * (cs + TAG)  # +1 to see "final"
        with self.inner.open_read(key, hlen + first * (cs + TAG), span) as raw:
            yield _Decryptor(raw, self._aead, header, first, lambda: self._bad(key), skip, length,  # type: ignore[misc]
                             ok=self._proof(key))

    def plain_size(self, key: str, stored: int) -> int:
        body = stored - _FIXED.size - len(key.encode())
        chunks = max(1, -(-body // (self.chunk_size + TAG)))
        return max(0, body - chunks * TAG)

    def stat(self, key: str) -> ObjectInfo:
        info = self.inner.stat(key)
        return ObjectInfo(key, self.plain_size(key, info.size), info.storage_class, info.mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for o in self.inner.list(prefix):
            yield ObjectInfo(o.key, self.plain_size(o.key, o.size), o.storage_class, o.mtime)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        """The inner check, then :meth:`check_key` (so a wrong key never writes)."""
        self.inner.check()
        self.check_key()

    def check_key(self) -> None:
        """The key must decrypt an object of the storage (exit 8 otherwise). The probe tries the 4 newest manifests,
        then the 4 smallest data objects (see ``_candidates``): damaged or swapped manifests do not make
        the key look wrong. An empty storage has nothing to check."""
        if self._key.proven:
            return
        self._key.probed = False
        tried = self._probe(None)
        if tried and not self._key.proven:
            raise EncryptionError(f"cannot decrypt any of {tried} object(s) of {self.name} (the newest manifests and "
                                  "the smallest data objects) "
                                  f"with the key of fingerprint {self.key_fingerprint}: wrong key, or not an "
                                  "encrypted repository",
                                  hint="set the key that encrypted this repository (manifests record its fingerprint); "
                                  "a storage that holds unencrypted data needs no 'encryption:' section")

    def free_bytes(self) -> int | None:
        return self.inner.free_bytes()

    def restore_request(self, key: str, days: int = 1) -> bool:
        return self.inner.restore_request(key, days)

    def for_thread(self) -> Storage:
        if self.thread_safe:
            return self
        import copy

        twin = copy.copy(self)  # same key, cipher (AESGCM is stateless) and key state; the inner's own connection
        twin.inner = self.inner.for_thread()
        return twin

    def temps(self) -> Iterator[ObjectInfo]:
        return self.inner.temps()

    def remove_temp(self, key: str) -> None:
        self.inner.remove_temp(key)


# ---------------------------------------------------------------------------------------------- stand-alone
def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, expect_key: str | None = None) -> str:
    """Decrypt one object read from ``src`` into ``dst``; returns the object key stored in the header."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) < _FIXED.size or fixed[:8] != MAGIC:
        raise EncryptionError("input is not an encrypted backup object (bad header)")
    header = fixed + _read_exact(src, _FIXED.unpack(fixed)[4])
    name = header[_FIXED.size :].decode(errors="replace")
    if expect_key is not None and name != expect_key:
        raise EncryptionError(f"input was written as {name!r}, not {expect_key!r}")
    fp = fingerprint(key)
    dec = _Decryptor(src, AESGCM(key), _check_header(header, name, "input", fp), 0, lambda: _bad(name, "input", fp))
    while chunk := dec.read(CHUNK):
        dst.write(chunk)
    return name


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, object_key: str, chunk_size: int = CHUNK) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    enc = _Encryptor(dst, AESGCM(key), make_header(object_key, chunk_size))
    while chunk := src.read(chunk_size):
        enc.write(chunk)
    enc.finish()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m backups.storage.crypto", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("genkey", help="print a new random key (64 hex digits)")
    for name in ("decrypt", "encrypt", "fingerprint"):
        sp = sub.add_parser(name)
        sp.add_argument("--key-env", required=True, help="environment variable holding the key (hex or base64)")
        if name == "decrypt":
            sp.add_argument("--expect-key", help="refuse an object written under another key")
        if name == "encrypt":
            sp.add_argument("--object-key", required=True, help="the storage key the object will live under")
    args = p.parse_args(argv)
    if args.cmd == "genkey":
        print(secrets.token_hex(32))
        return 0
    try:
        if not os.environ.get(args.key_env, "").strip():
            raise EncryptionError(f"environment variable {args.key_env} is not set", hint=f"export {args.key_env}=<key>")
        key = parse_key(os.environ[args.key_env], f"environment variable {args.key_env}")
        if args.cmd == "fingerprint":
            print(fingerprint(key))
        elif args.cmd == "encrypt":
            encrypt_stream(sys.stdin.buffer, sys.stdout.buffer, key, args.object_key)
        else:
            name = decrypt_stream(sys.stdin.buffer, sys.stdout.buffer, key, args.expect_key)
            print(f"decrypted {name} (key {fingerprint(key)})", file=sys.stderr)
        sys.stdout.buffer.flush()
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
