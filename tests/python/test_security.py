"""Authentication, permissions and TLS through a real pyarrow Flight client."""

import json
import subprocess

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server, _binary


def _hash_password(password: str) -> str:
    return subprocess.run(
        [_binary(), "hash-password"], input=password + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()


def _new_token():
    out = subprocess.run([_binary(), "hash-token"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return fields["token"], fields["token_sha256"]


def _put(client, options, target, asset, table):
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": asset}))
    writer, reader = client.do_put(descriptor, table.schema, options=options)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


@pytest.fixture
def secured(tmp_path):
    reader_token, reader_sha = _new_token()
    (tmp_path / "quiver.toml").write_text(
        f"""
[auth]
anonymous = "none"

[[auth.users]]
name = "etl"
password_hash = "{_hash_password('correct horse')}"
write = ["parquet:sales/"]

[[auth.tokens]]
name = "dashboards"
token_sha256 = "{reader_sha}"
read = ["parquet"]
"""
    )
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    yield srv, reader_token
    srv.stop()


def test_basic_handshake_tokens_and_grants(secured):
    srv, reader_token = secured
    table = pa.table({"x": [1, 2, 3]})
    client = fl.connect(srv.uri)
    # No credentials: nothing but the health service answers.
    with pytest.raises(fl.FlightUnauthenticatedError, match="requires credentials"):
        list(client.list_flights())
    with pytest.raises(fl.FlightUnauthenticatedError):
        client.authenticate_basic_token("etl", "wrong")

    header = client.authenticate_basic_token("etl", "correct horse")
    etl = fl.FlightCallOptions(headers=[header])
    _put(client, etl, "parquet", "sales/daily", table)
    with pytest.raises(fl.FlightUnauthorizedError, match="'etl' may not write asset 'hr/pay'"):
        _put(client, etl, "parquet", "hr/pay", table)
    with pytest.raises(fl.FlightUnauthorizedError):
        _put(client, etl, "duckdb", "sales/daily", table)

    # A static read-only token reads but cannot write or delete.
    dashboards = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {reader_token}".encode())])
    info = client.get_flight_info(fl.FlightDescriptor.for_path("parquet", "sales", "daily"), options=dashboards)
    assert client.do_get(info.endpoints[0].ticket, options=dashboards).read_all().equals(table)
    assert [f.descriptor.path for f in client.list_flights(options=dashboards)] == [[b"parquet", b"sales", b"daily"]]
    with pytest.raises(fl.FlightUnauthorizedError):
        _put(client, dashboards, "parquet", "sales/daily", table)
    delete = fl.Action("delete", json.dumps({"target": "parquet", "asset": "sales/daily"}).encode())
    with pytest.raises(fl.FlightUnauthorizedError):
        list(client.do_action(delete, options=dashboards))
    bad = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer qt_not-a-token")])
    with pytest.raises(fl.FlightUnauthenticatedError):
        list(client.list_flights(options=bad))
    client.close()
    assert "correct horse" not in srv.logs() and reader_token not in srv.logs()


def test_open_server_refuses_a_public_address_without_auth(tmp_path):
    result = subprocess.run(
        [_binary(), "serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "without authentication" in result.stderr


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(directory):
    """A CA, a server certificate for localhost and a client certificate, all from the CA."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=quiver-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )
    for name, usage, san in [("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"), ("client", "clientAuth", "DNS:client")]:
        (directory / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory,
        )


def test_tls_and_mutual_tls(tmp_path):
    _certificates(tmp_path)
    (tmp_path / "quiver.toml").write_text(
        f"""
[tls]
cert_file = "{tmp_path / 'server.pem'}"
key_file = "{tmp_path / 'server.key'}"
client_ca_file = "{tmp_path / 'ca.pem'}"
"""
    )
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    try:
        ca = (tmp_path / "ca.pem").read_bytes()
        uri = f"grpc+tls://localhost:{srv.port}"
        client = fl.connect(
            uri,
            tls_root_certs=ca,
            cert_chain=(tmp_path / "client.pem").read_bytes(),
            private_key=(tmp_path / "client.key").read_bytes(),
        )
        table = pa.table({"x": [1, 2]})
        _put(client, fl.FlightCallOptions(), "arrow", "secure/t", table)
        info = client.get_flight_info(fl.FlightDescriptor.for_path("arrow", "secure", "t"))
        assert client.do_get(info.endpoints[0].ticket).read_all().equals(table)
        client.close()
        # Without a client certificate the handshake fails.
        anonymous = fl.connect(uri, tls_root_certs=ca)
        with pytest.raises(fl.FlightError):
            list(anonymous.list_actions())
        anonymous.close()
        # Plaintext gRPC is not spoken on a TLS port.
        plain = fl.connect(f"grpc://localhost:{srv.port}")
        with pytest.raises(fl.FlightError):
            list(plain.list_actions())
        plain.close()
    finally:
        srv.stop()
