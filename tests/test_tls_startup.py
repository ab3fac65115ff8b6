"""Start-up checks of the certificate and key: each mistake stops the daemon
with exit status 1 and its own message, before any port is opened (the SSE
port is held by the test, so binding first would give another message)."""

import datetime
import os
import socket
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import Daemon, pyhasses_env
from tls_support import in_days, open_stream, selfsigned, ssl_args, wait_stopped, write_pair


def start_failing(tmp_path, cert, key, *extra):
    daemon = Daemon(tmp_path, *ssl_args(cert, key), *extra, start=False)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", daemon.port))
    holder.listen()
    try:
        daemon.start(wait_ready=False)
        status = wait_stopped(daemon)
    finally:
        holder.close()
        daemon.stop()
    return status, daemon.log()


def expect_failure(tmp_path, cert, key, message, *extra):
    status, log = start_failing(tmp_path, cert, key, *extra)
    assert status == 1, log
    assert f"pyhasses: {message}\n" in log, log
    assert "cannot listen" not in log and "serving" not in log


@pytest.fixture
def good(tmp_path):
    return write_pair(tmp_path / "good")


def test_missing_certificate(tmp_path, good):
    missing = tmp_path / "nothing.pem"
    expect_failure(tmp_path, missing, good[1], f"cannot read certificate file {missing}: No such file or directory")


def test_missing_key(tmp_path, good):
    missing = tmp_path / "nokey.pem"
    expect_failure(tmp_path, good[0], missing, f"cannot read private key file {missing}: No such file or directory")


def test_unreadable_certificate(tmp_path, good):
    # The tests may run as root, whom file modes do not stop: a directory
    # cannot be read as a file by anyone.
    directory = tmp_path / "adir"
    directory.mkdir()
    expect_failure(tmp_path, directory, good[1], f"cannot read certificate file {directory}: Is a directory")


def test_certificate_not_pem(tmp_path, good):
    der = tmp_path / "cert.der"
    cert = x509.load_pem_x509_certificate(good[0].read_bytes())
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    expect_failure(tmp_path, der, good[1], f"certificate file {der} is not a PEM certificate")


def test_key_not_pem(tmp_path, good):
    junk = tmp_path / "key.txt"
    junk.write_text("this is not a key\n")
    expect_failure(tmp_path, good[0], junk, f"private key file {junk} is not a PEM private key")


def test_certificate_file_given_as_key(tmp_path, good):
    expect_failure(tmp_path, good[0], good[0], f"private key file {good[0]} is not a PEM private key")


def test_key_does_not_match(tmp_path, good):
    other = write_pair(tmp_path / "other")
    expect_failure(tmp_path, good[0], other[1], f"private key {other[1]} does not match certificate {good[0]}")


def test_expired_certificate(tmp_path):
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert, key = write_pair(tmp_path / "old", days=30, not_before=start)
    expect_failure(tmp_path, cert, key, f"certificate {cert} expired on 2020-01-31 00:00:00 UTC")


def test_not_yet_valid_certificate(tmp_path):
    start = in_days(10).replace(microsecond=0)
    cert, key = write_pair(tmp_path / "future", not_before=start)
    expect_failure(tmp_path, cert, key, f"certificate {cert} is not valid before {start:%Y-%m-%d %H:%M:%S} UTC")


def test_encrypted_key_without_passphrase(tmp_path):
    cert, key = write_pair(tmp_path / "enc", passphrase=b"s3cret")
    expect_failure(tmp_path, cert, key,
                   f"private key {key} is encrypted; give its passphrase with --key-passphrase-file=PATH")


def test_encrypted_key_with_wrong_passphrase(tmp_path):
    cert, key = write_pair(tmp_path / "enc", passphrase=b"s3cret")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    expect_failure(tmp_path, cert, key, f"cannot decrypt private key {key}: wrong passphrase",
                   f"--key-passphrase-file={wrong}")


def test_encrypted_key_with_its_passphrase_serves(tmp_path, daemon_factory):
    cert, key = write_pair(tmp_path / "enc", passphrase=b"s3cret")
    phrase = tmp_path / "phrase"
    phrase.write_text("s3cret\n")
    daemon = daemon_factory(*ssl_args(cert, key), f"--key-passphrase-file={phrase}")
    client = open_stream(daemon, cert)
    daemon.control("room1=unlocked\n")
    assert client.read_event()["data"] == "unlocked"
    client.close()


def test_missing_cert_option_is_a_usage_error(tmp_path, good):
    daemon = Daemon(tmp_path, "-ssl", f"-privatekey-file={good[1]}", start=False)
    daemon.start(wait_ready=False)
    assert wait_stopped(daemon) == 2
    assert "-ssl needs -cert-file=PEM and -privatekey-file=PEM" in daemon.log()


def test_certificate_expiring_soon_starts_with_a_warning(tmp_path, daemon_factory):
    cert, key = write_pair(tmp_path / "soon", days=5)
    daemon = daemon_factory(*ssl_args(cert, key), "-q")
    daemon.wait_log(rf"WARNING: certificate {cert} expires in (4\.9|5\.0) days \(on ")
    client = open_stream(daemon, cert)
    client.close()


def test_selfsigned_command_writes_a_pair_for_localhost(tmp_path):
    cert, key = selfsigned(tmp_path / "local")
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sorted(map(str, names.get_values_for_type(x509.IPAddress))) == ["127.0.0.1", "::1"]
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert parsed.issuer == parsed.subject
    ssl.create_default_context().load_cert_chain(cert, key)  # OpenSSL too finds that the key belongs to it


def test_selfsigned_command_refuses_an_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "pyhasses.selfsigned", str(blocker / "sub")],
                            env=pyhasses_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot write into {blocker / 'sub'}" in result.stderr


def test_relative_paths_are_made_absolute_at_start(tmp_path, good):
    # The daemon runs in tmp_path; a reload after daemonising (cwd /) must
    # still find the files, so they are resolved once, at start.
    expect_failure(tmp_path, "relative-missing.pem", good[1],
                   f"cannot read certificate file {tmp_path / 'relative-missing.pem'}: No such file or directory")
