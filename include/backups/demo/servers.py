"""Loopback stand-ins for the production remote storages: an S3 endpoint (moto) and an SFTP server (OpenSSH).

Used by ``make demo-remote`` (the Airflow demo on ``include/backups.yaml``: local + cloud (S3) + offsite (SFTP,
encrypted)) and by the fan-out rows of ``make bench``. Plain Python, no Airflow import:

* :func:`moto_s3` — moto's ``ThreadedMotoServer`` on ``127.0.0.1:<free port>`` in this process, with the bucket
  created; yields the endpoint URL. Objects live in memory (large ones spill to temp files) and vanish at exit.
* :func:`sshd` — a real OpenSSH ``/usr/sbin/sshd -D -e`` on ``127.0.0.1:<free port>`` with a temporary ed25519
  host key and client key, logging in as the current user with the client key (``StrictModes no``,
  ``UsePAM no``, ``Subsystem sftp internal-sftp``); yields an :class:`Sshd`. Stopping it also ends the
  per-connection session processes. Needs root (or a user sshd may switch to) and ``openssh-server``.
* :func:`remote_environment` — the environment variables that point the production config at both servers:
  ``AIRFLOW_CONN_BACKUP_S3``, ``AIRFLOW_CONN_BACKUP_SFTP`` (host key pinned), ``BACKUP_S3_BUCKET``,
  ``BACKUP_SFTP_PATH`` and ``BACKUP_OFFSITE_KEY`` (a fresh random key).
* :func:`remote_servers` — both servers plus that environment, in one ``with``.

Everything is stopped and the temporary keys removed when the ``with`` block ends, also after an error.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"  # noqa: S105 - a throw-away credential for a loopback moto server
REGION = "us-east-1"
BUCKET = "fmr-backups"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


class ServerError(RuntimeError):
    """A loopback test server could not be started."""


# ----------------------------------------------------------------------------------------------------- S3
@contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port) with ``bucket`` created; yields the endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServerError(f"moto's server mode is not installed ({exc}); run `make venv` (needs moto[server])") from None
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------- SFTP
@dataclass
class Sshd:
    """A running sshd: where it listens, who logs in, with which key, and the host key to pin."""

    port: int
    user: str
    client_key: Path
    host_key: str  # "ssh-ed25519 AAAA..." (the public host key, for the connection's host_key extra)
    dir: Path
    pid: int


def _keypair(path: Path) -> str:
    """Write an ed25519 private key (OpenSSH format, 0600) and ``<path>.pub``; return "ssh-ed25519 AAAA..."."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    Path(f"{path}.pub").write_text(pub + "\n")
    return pub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's session processes start their own sessions, so no process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the listener and its session processes (by pid); SIGKILL whatever is still there after 5 s."""
    if proc.poll() is not None:
        return
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proc.poll()
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and (p != proc.pid or proc.returncode is None)]
        if not pids:
            return
        time.sleep(0.05)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(5)


def find_sshd() -> str:
    for cand in (shutil.which("sshd"), *SSHD_CANDIDATES):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ServerError("OpenSSH sshd not found: install it with `apt-get install openssh-server` "
                      "(Debian/Ubuntu; the service need not run, the demo starts its own sshd on 127.0.0.1)")


@contextmanager
def sshd() -> Iterator[Sshd]:
    """A real OpenSSH sshd on 127.0.0.1 (a free port), temporary keys, SFTP for the current user."""
    exe = find_sshd()
    d = Path(tempfile.mkdtemp(prefix="fmr-sshd-"))
    proc: subprocess.Popen | None = None
    try:
        d.chmod(0o700)
        port, user = _free_port(), getpass.getuser()
        host_pub = _keypair(d / "host_ed25519")
        _keypair(d / "client_ed25519")
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "Subsystem sftp internal-sftp\nMaxSessions 50\nMaxStartups 50\nLogLevel INFO\n"
        )
        try:
            Path("/run/sshd").mkdir(exist_ok=True)  # Debian's privilege-separation directory
        except PermissionError:
            pass  # sshd -t below says what is wrong
        test = subprocess.run([exe, "-t", "-f", str(d / "sshd_config")], capture_output=True, text=True)
        if test.returncode != 0:
            raise ServerError(f"sshd refused its config ({exe} -t): {test.stderr.strip()[-800:]}")
        log = open(d / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([exe, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        log.close()
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise ServerError(f"sshd exited at start: {(d / 'sshd.log').read_text()[-1500:]}") from None
                time.sleep(0.05)
        else:
            raise ServerError(f"sshd did not listen on 127.0.0.1:{port}: {(d / 'sshd.log').read_text()[-1500:]}")
        yield Sshd(port=port, user=user, client_key=d / "client_ed25519", host_key=host_pub, dir=d, pid=proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------- environment
def remote_environment(s3_url: str, server: Sshd, *, sftp_path: str | Path, bucket: str = BUCKET,
                       offsite_key: str | None = None, ssh_compress: bool = False) -> dict[str, str]:
    """Environment for ``include/backups.yaml`` against the loopback servers (Airflow connections as JSON).

    ``ssh_compress``: Airflow's SSHHook turns SSH (zlib) compression ON unless the connection's ``compress``
    extra says "false". Backup objects are zstd-compressed (and the offsite ones encrypted), so zlib only burns
    CPU: measured here with paramiko, pipelined SFTP writes of incompressible data ran at 36 MB/s with
    compression and 155 MB/s without. The connection therefore sets ``compress: "false"`` unless asked.
    """
    sftp_extra = {"key_file": str(server.client_key), "host_key": server.host_key, "look_for_keys": "false"}
    if not ssh_compress:
        sftp_extra["compress"] = "false"
    return {
        "AIRFLOW_CONN_BACKUP_S3": json.dumps({
            "conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
            "extra": {"endpoint_url": s3_url, "region_name": REGION},
        }),
        "AIRFLOW_CONN_BACKUP_SFTP": json.dumps({
            "conn_type": "sftp", "host": "127.0.0.1", "port": server.port, "login": server.user,
            "extra": sftp_extra,
        }),
        "BACKUP_S3_BUCKET": bucket,
        "BACKUP_SFTP_PATH": str(sftp_path),
        "BACKUP_OFFSITE_KEY": offsite_key or secrets.token_hex(32),
    }


@contextmanager
def remote_servers(sftp_path: str | Path | None = None, *, bucket: str = BUCKET,
                   ssh_compress: bool = False) -> Iterator[dict[str, str]]:
    """Start moto S3 and sshd, yield :func:`remote_environment`; stop both (and remove temp dirs) at the end."""
    tmp = None
    if sftp_path is None:
        tmp = sftp_path = tempfile.mkdtemp(prefix="fmr-sftp-")
    try:
        with moto_s3(bucket) as url, sshd() as server:
            yield remote_environment(url, server, sftp_path=sftp_path, bucket=bucket, ssh_compress=ssh_compress)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # self-check: both servers answer with the credentials in the environment
    import base64

    import boto3
    import paramiko

    with remote_servers() as env:
        s3c = json.loads(env["AIRFLOW_CONN_BACKUP_S3"])
        s3 = boto3.client("s3", endpoint_url=s3c["extra"]["endpoint_url"], region_name=REGION,
                          aws_access_key_id=s3c["login"], aws_secret_access_key=s3c["password"])
        s3.put_object(Bucket=env["BACKUP_S3_BUCKET"], Key="hello", Body=b"hi")
        print("s3  ", s3c["extra"]["endpoint_url"], [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]])
        c = json.loads(env["AIRFLOW_CONN_BACKUP_SFTP"])
        ssh = paramiko.SSHClient()
        kind, b64 = c["extra"]["host_key"].split()[:2]
        ssh.get_host_keys().add(f"[127.0.0.1]:{c['port']}", kind, paramiko.Ed25519Key(data=base64.b64decode(b64)))
        ssh.connect("127.0.0.1", port=c["port"], username=c["login"], key_filename=c["extra"]["key_file"],
                    look_for_keys=False, allow_agent=False)
        print("sftp", f"{c['login']}@127.0.0.1:{c['port']}", ssh.open_sftp().listdir(env["BACKUP_SFTP_PATH"]))
        ssh.close()
