"""EncryptedStorage: the contract suite over memory and local storage, tampering, wrong keys, the CLI helper."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups.config import EncryptionConfig
from backups.errors import ConfigError, EncryptionError, IntegrityError
from backups.storage import LocalStorage, MemoryStorage, ReadOnlyStorage
from backups.storage.crypto import TAG, EncryptedStorage, fingerprint, load_key, parse_key

from .contract import StorageContract

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
SMALL = 4096  # small chunks in tests so objects span many chunks
ROOT = Path(__file__).resolve().parents[3]


class TestEncryptedMemory(StorageContract):
    @pytest.fixture
    def storage(self):
        return EncryptedStorage(MemoryStorage(), KEY, chunk_size=SMALL)


class TestEncryptedLocal(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return EncryptedStorage(LocalStorage(tmp_path / "repo"), KEY)  # the production chunk size (1 MiB)


@pytest.fixture
def inner():
    return MemoryStorage("offsite")


def test_inner_storage_sees_only_ciphertext(inner):
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    plain = b"secret payroll row\n" * 1000
    enc.put_bytes("data/x", plain)
    stored = inner.objects["data/x"]
    assert b"payroll" not in stored and stored.startswith(b"FMRBKENC\x01")
    assert enc.stat("data/x").size == len(plain) == next(iter(enc.list("data/"))).size
    assert inner.stat("data/x").size > len(plain)
    enc.put_bytes("e", b"")
    assert len(inner.objects["e"]) == 23 + 1 + TAG and enc.get_bytes("e") == b"" and enc.stat("e").size == 0


def test_same_plaintext_encrypts_differently(inner):
    enc = EncryptedStorage(inner, KEY)
    enc.put_bytes("a", b"same")
    enc.put_bytes("b", b"same")
    assert inner.objects["a"][8:] != inner.objects["b"][8:]
    enc.put_bytes("a", b"same")  # an identical re-write is accepted (compared by plaintext), the object kept
    assert enc.get_bytes("a") == b"same"


def test_ranged_reads_across_chunks(inner):
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    data = os.urandom(5 * SMALL + 17)
    enc.put_bytes("r", data)
    for off, n in [(0, 1), (SMALL - 3, 10), (2 * SMALL, SMALL), (5 * SMALL, 17), (5 * SMALL + 10, 100), (len(data), 5)]:
        with enc.open_read("r", off, n) as fh:
            assert fh.read() == data[off : off + n], (off, n)
    with enc.open_read("r", 3 * SMALL + 1) as fh:
        assert fh.read() == data[3 * SMALL + 1 :]


def test_wrong_key_is_refused_and_nothing_written(inner, tmp_path):
    EncryptedStorage(inner, KEY).put_bytes("snapshots/a.json", b"{}")
    EncryptedStorage(inner, KEY).put_bytes("data/x", b"payload" * 100)
    wrong = EncryptedStorage(inner, OTHER)
    with pytest.raises(EncryptionError) as ei:
        wrong.get_bytes("data/x")
    assert str(ei.value).startswith("cannot decrypt data/x on offsite: wrong key or corrupted data")
    target = LocalStorage(tmp_path / "out")
    with pytest.raises(EncryptionError):
        wrong.copy_to("data/x", target)
    assert list(target.list("")) == [] and not list((tmp_path / "out").rglob("*x*"))
    with pytest.raises(EncryptionError):
        wrong.check()  # a wrong key is caught before a backup writes anything with it
    EncryptedStorage(inner, KEY).check()


@pytest.mark.parametrize("where", [0, 9, 25, 23 + 6 + 5, -1])  # magic, chunk size, key, data, tag
def test_flipped_byte_detected(inner, where):
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    enc.put_bytes("data/x", os.urandom(3 * SMALL))
    blob = bytearray(inner.objects["data/x"])
    blob[where] ^= 0x01
    inner.objects["data/x"] = bytes(blob)
    with pytest.raises((EncryptionError, IntegrityError)):  # a changed key name in the header is damage (exit 4)
        enc.get_bytes("data/x")


@pytest.mark.parametrize("cut", ["chunk_boundary", "mid_chunk", "header_only", "drop_last"])
def test_truncation_and_extension_detected(inner, cut):
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    enc.put_bytes("data/x", os.urandom(3 * SMALL + 5))
    blob = inner.objects["data/x"]
    hlen = 23 + len("data/x")
    inner.objects["data/x"] = {
        "chunk_boundary": blob[: hlen + 2 * (SMALL + TAG)],
        "mid_chunk": blob[:-7],
        "header_only": blob[:hlen],
        "drop_last": blob + blob[hlen : hlen + SMALL + TAG],  # a duplicated chunk appended
    }[cut]
    with pytest.raises((EncryptionError, IntegrityError)):  # damage once a chunk proved the key right (exit 4)
        enc.get_bytes("data/x")


def test_swapped_objects_detected(inner):
    enc = EncryptedStorage(inner, KEY)
    enc.put_bytes("data/a", b"A")
    enc.put_bytes("data/b", b"B")
    inner.objects["data/b"] = inner.objects["data/a"]
    with pytest.raises(IntegrityError, match="written as another key"):  # damage, not a key problem
        enc.get_bytes("data/b")


def test_unencrypted_object_gives_clear_error(inner):
    inner.put_bytes("data/plain", b"not encrypted at all, just bytes")
    with pytest.raises(EncryptionError, match="not an encrypted object"):
        EncryptedStorage(inner, KEY).get_bytes("data/plain")


def test_key_never_in_messages_or_repr(inner, monkeypatch):
    hexkey, b64key = KEY.hex(), base64.b64encode(KEY).decode()
    enc = EncryptedStorage(inner, KEY)
    enc.put_bytes("k", b"v")
    inner.objects["k"] = inner.objects["k"][:-1]
    texts = [repr(enc), enc.describe(), enc.key_fingerprint]
    with pytest.raises(EncryptionError) as ei:
        enc.get_bytes("k")
    texts.append(str(ei.value))
    monkeypatch.setenv("BAD_KEY", hexkey[:-2])  # one byte short
    with pytest.raises(EncryptionError) as ei2:
        load_key(EncryptionConfig(key_env="BAD_KEY"), None, "offsite")
    texts.append(str(ei2.value))
    for t in texts:
        assert hexkey not in t and b64key not in t and hexkey[:-2] not in t
    assert enc.key_fingerprint == fingerprint(KEY) and len(enc.key_fingerprint) == 16
    assert enc.key_fingerprint in enc.describe()


def test_read_only_wrapper_keeps_encryption(inner):
    EncryptedStorage(inner, KEY).put_bytes("k", b"v")
    assert ReadOnlyStorage(EncryptedStorage(inner, KEY)).get_bytes("k") == b"v"


def test_load_key_from_env_and_connection(monkeypatch):
    monkeypatch.setenv("BK_HEX", KEY.hex())
    monkeypatch.setenv("BK_B64", base64.b64encode(KEY).decode())
    assert load_key(EncryptionConfig(key_env="BK_HEX"), None, "s") == KEY
    assert load_key(EncryptionConfig(key_env="BK_B64"), None, "s") == KEY
    monkeypatch.delenv("BK_MISSING", raising=False)
    with pytest.raises(EncryptionError) as ei:
        load_key(EncryptionConfig(key_env="BK_MISSING"), None, "offsite")
    assert "BK_MISSING" in str(ei.value) and "offsite" in str(ei.value) and "export BK_MISSING" in str(ei.value)

    class Resolver:
        def __init__(self, value):
            self.value = value

        def secret(self, conn_id):
            assert conn_id == "backup_key"
            return self.value

    assert load_key(EncryptionConfig(key_conn_id="backup_key"), Resolver(f" {KEY.hex()}\n"), "s") == KEY
    with pytest.raises(EncryptionError, match="connection backup_key has no password"):
        load_key(EncryptionConfig(key_conn_id="backup_key"), Resolver(""), "s")
    with pytest.raises(EncryptionError, match="32-byte key"):
        parse_key("zz" * 32, "test")


def test_open_storage_wraps_encryption(tmp_path, monkeypatch):
    from backups.config import parse_config
    from backups.storage import open_storage

    monkeypatch.setenv("BK", KEY.hex())
    cfg = parse_config(f"""
application: app
sources: {{db: {{type: sqlite, path: /x.db}}}}
storages:
  vault: {{type: local, path: {tmp_path}/vault, encryption: {{key_env: BK}}}}
  keyed: {{type: local, path: {tmp_path}/vault, encryption: {{key_conn_id: backup_key}}}}
tiers: {{daily: {{type: full, schedule: "0 2 * * *", sources: [db], storages: [vault]}}}}
""")
    s = open_storage(cfg, "vault")
    s.put_bytes("data/x", b"hello")
    assert s.key_fingerprint == fingerprint(KEY)
    assert (tmp_path / "vault" / "data" / "x").read_bytes().startswith(b"FMRBKENC")
    assert open_storage(cfg, "vault", read_only=True).get_bytes("data/x") == b"hello"
    with pytest.raises(ConfigError):
        open_storage(cfg, "keyed")  # a connection needs Airflow's resolver


def _cli(args, stdin: bytes, env_key: str | None):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'include'}"}
    env.pop("BK_CLI", None)
    if env_key is not None:
        env["BK_CLI"] = env_key
    return subprocess.run([sys.executable, "-m", "backups.storage.crypto", *args], input=stdin, env=env,
                          capture_output=True, timeout=60)


def test_cli_decrypt_round_trips(tmp_path):
    store = EncryptedStorage(LocalStorage(tmp_path), KEY, chunk_size=SMALL)
    data = os.urandom(3 * SMALL + 99)
    store.put_bytes("data/full/app.tar.zst", data)
    blob = (tmp_path / "data" / "full" / "app.tar.zst").read_bytes()

    ok = _cli(["decrypt", "--key-env", "BK_CLI"], blob, KEY.hex())
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == data and b"data/full/app.tar.zst" in ok.stderr

    b64 = base64.b64encode(KEY).decode()
    assert _cli(["decrypt", "--key-env", "BK_CLI", "--expect-key", "data/full/app.tar.zst"], blob, b64).stdout == data

    wrong = _cli(["decrypt", "--key-env", "BK_CLI"], blob, OTHER.hex())
    assert wrong.returncode == 8 and wrong.stdout == b"" and b"wrong key or corrupted data" in wrong.stderr
    assert OTHER.hex().encode() not in wrong.stderr

    assert _cli(["decrypt", "--key-env", "BK_CLI"], blob[:-20], KEY.hex()).returncode == 8
    assert _cli(["decrypt", "--key-env", "BK_CLI", "--expect-key", "other"], blob, KEY.hex()).returncode == 8
    missing = _cli(["decrypt", "--key-env", "BK_CLI"], blob, None)
    assert missing.returncode == 8 and b"BK_CLI is not set" in missing.stderr

    enc = _cli(["encrypt", "--key-env", "BK_CLI", "--object-key", "data/y"], b"manual", KEY.hex())
    (tmp_path / "data" / "y").write_bytes(enc.stdout)
    assert EncryptedStorage(LocalStorage(tmp_path), KEY).get_bytes("data/y") == b"manual"
    assert len(_cli(["genkey"], b"", None).stdout.strip()) == 64


def test_format_doc_decrypts_by_hand(inner):
    """docs/storage.md: decrypt with nothing but AESGCM and the header layout."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = os.urandom(2 * SMALL + 3)
    EncryptedStorage(inner, KEY, chunk_size=SMALL).put_bytes("data/x.tar.zst", data)
    blob = inner.objects["data/x.tar.zst"]
    assert blob[:8] == b"FMRBKENC" and blob[8] == 1
    chunk_size, prefix, key_len = int.from_bytes(blob[9:13], "big"), blob[13:21], int.from_bytes(blob[21:23], "big")
    header = blob[: 23 + key_len]
    assert header[23:] == b"data/x.tar.zst"
    body = blob[len(header) :]
    chunks = [body[i : i + chunk_size + 16] for i in range(0, len(body), chunk_size + 16)]
    out = b"".join(
        AESGCM(KEY).decrypt(prefix + i.to_bytes(4, "big"), c, header + (b"\x01" if i == len(chunks) - 1 else b"\x00"))
        for i, c in enumerate(chunks)
    )
    assert out == data


# ---- issue 16: a damaged object is damage (exit 4) once the key is proven; only a key no object opens is exit 8
def _repo_like(inner) -> EncryptedStorage:
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    for i in range(3):
        enc.put_bytes(f"snapshots/s{i}.json", b'{"n": %d}' % i)
        enc.put_bytes(f"data/s{i}/a.tar.zst", os.urandom(2 * SMALL + i))
    return enc


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "plain", "copied", "renamed_header"])
def test_damaged_newest_manifest_is_integrity_error_and_check_passes(inner, damage):
    _repo_like(inner)
    blob = bytearray(inner.objects["snapshots/s2.json"])
    other = inner.objects["snapshots/s1.json"]
    inner.objects["snapshots/s2.json"] = {
        "flip": bytes(blob[:-3]) + bytes([blob[-3] ^ 1]) + bytes(blob[-2:]),
        "truncate": bytes(blob[:-1]),
        "garbage": os.urandom(len(blob)),
        "plain": b'{"n": 2}',
        "copied": other,  # valid ciphertext of another key name: the header names snapshots/s1.json
        "renamed_header": other.replace(b"snapshots/s1.json", b"snapshots/s2.json"),  # the AAD binding catches it
    }[damage]
    fresh = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    fresh.check()  # the key is right: one damaged manifest does not make it look wrong
    with pytest.raises(IntegrityError, match="snapshots/s2.json on offsite is damaged") as ei:
        fresh.get_bytes("snapshots/s2.json")
    assert ei.value.exit_code == 4 and KEY.hex() not in str(ei.value)
    assert EncryptedStorage(inner, KEY, chunk_size=SMALL).get_bytes("snapshots/s1.json") == b'{"n": 1}'
    with pytest.raises(IntegrityError):  # without a check first: the first failure probes the others
        EncryptedStorage(inner, KEY, chunk_size=SMALL).get_bytes("snapshots/s2.json")


def test_wrong_key_stays_exit_8_even_with_damage(inner):
    _repo_like(inner)
    inner.objects["snapshots/s2.json"] = inner.objects["snapshots/s2.json"][:-1]
    wrong = EncryptedStorage(inner, OTHER, chunk_size=SMALL)
    with pytest.raises(EncryptionError, match="wrong key") as ei:
        wrong.check()
    assert ei.value.exit_code == 8 and OTHER.hex() not in str(ei.value)
    for key in ("snapshots/s2.json", "snapshots/s1.json", "data/s0/a.tar.zst"):
        with pytest.raises(EncryptionError):
            EncryptedStorage(inner, OTHER, chunk_size=SMALL).get_bytes(key)


def test_every_manifest_damaged_and_no_data_is_the_key(inner):
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    enc.put_bytes("snapshots/a.json", b"{}")
    inner.objects["snapshots/a.json"] = inner.objects["snapshots/a.json"][:-1]
    with pytest.raises(EncryptionError):
        EncryptedStorage(inner, KEY, chunk_size=SMALL).check()  # nothing decrypts: indistinguishable from a wrong key


def test_damaged_data_chunk_after_key_proven_is_integrity_error(inner):
    _repo_like(inner)
    blob = bytearray(inner.objects["data/s1/a.tar.zst"])
    blob[23 + len("data/s1/a.tar.zst") + 3] ^= 1  # first chunk
    inner.objects["data/s1/a.tar.zst"] = bytes(blob)
    fresh = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    with pytest.raises(IntegrityError, match="data/s1/a.tar.zst on offsite is damaged"):
        fresh.get_bytes("data/s1/a.tar.zst")
    assert fresh.get_bytes("snapshots/s0.json") == b'{"n": 0}'


def test_many_damaged_newest_manifests_do_not_make_the_key_look_wrong(inner):
    """Ransomware-style: the newest manifests all overwritten. The data objects prove the key; every damaged
    manifest is damage (exit 4), the intact older one reads."""
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    for i in range(10):
        enc.put_bytes(f"snapshots/s{i:02d}.json", b'{"n": %d}' % i)
    enc.put_bytes("data/s00/a.index.zst", b"index")
    for i in range(1, 10):
        inner.objects[f"snapshots/s{i:02d}.json"] = os.urandom(64)
    fresh = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    fresh.check()
    for i in range(1, 10):
        with pytest.raises(IntegrityError):
            fresh.get_bytes(f"snapshots/s{i:02d}.json")
    assert fresh.get_bytes("snapshots/s00.json") == b'{"n": 0}'
    with pytest.raises(EncryptionError, match="wrong key"):
        EncryptedStorage(inner, OTHER, chunk_size=SMALL).check()


def test_the_probe_lists_data_only_when_the_newest_manifests_fail(inner):
    _repo_like(inner)
    listed: list[str] = []
    real_list = inner.list

    def counting(prefix=""):
        listed.append(prefix)
        return real_list(prefix)

    inner.list = counting
    EncryptedStorage(inner, KEY, chunk_size=SMALL).check()
    assert "data/" not in listed and "snapshots/" in listed  # healthy: data/ is not listed on every command


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 3 * SMALL + 5), min_size=2, max_size=5), data=st.data())
def test_property_any_damage_of_one_object_is_exit_4_and_never_wrong_bytes(sizes, data):
    """Any damage — a flipped bit anywhere, a cut anywhere, bytes appended, another object's ciphertext — of one
    object among intact ones: the storage check passes, the damaged object raises IntegrityError (exit 4, never
    plaintext that differs), and every other object still reads back exactly."""
    inner = MemoryStorage("offsite")
    enc = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    plain = {f"data/s/o{i}": os.urandom(n) for i, n in enumerate(sizes)}
    for k, v in plain.items():
        enc.put_bytes(k, v)
    victim = data.draw(st.sampled_from(sorted(plain)))
    blob = bytearray(inner.objects[victim])
    how = data.draw(st.sampled_from(["flip", "cut", "append", "swap"]))
    if how == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "cut":
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    elif how == "append":
        blob += data.draw(st.binary(min_size=1, max_size=SMALL + 40))
    else:
        other = data.draw(st.sampled_from(sorted(set(plain) - {victim})))
        blob = bytearray(inner.objects[other])
    inner.objects[victim] = bytes(blob)
    fresh = EncryptedStorage(inner, KEY, chunk_size=SMALL)
    fresh.check()
    with pytest.raises(IntegrityError) as ei:
        fresh.get_bytes(victim)
    assert ei.value.exit_code == 4 and victim in str(ei.value)
    for k, v in plain.items():
        if k != victim:
            assert fresh.get_bytes(k) == v
