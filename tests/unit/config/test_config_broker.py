"""synkler.config: the broker's password and TLS to the broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.configkit import error_of, write

# ---------------------------------------------------------------- the broker password


def test_the_broker_password_is_read_from_broker_password_file_without_its_newline(
    parse, tmp_path: Path, conf_path: Path
) -> None:
    secret = write(tmp_path / "secret", "s3cret pass\n")
    cfg = parse(broker_password_file=str(secret))
    assert cfg.broker_password == "s3cret pass"
    assert cfg.broker_password_file == secret
    assert cfg.secret_files == (secret,)


def test_broker_password_file_is_relative_to_the_config_file(parse, conf_path: Path) -> None:
    write(conf_path.parent / "pw", "x\r\n")
    cfg = parse(broker_password_file="pw")
    assert (cfg.broker_password, cfg.broker_password_file) == ("x", conf_path.parent / "pw")


def test_broker_password_and_broker_password_file_together_are_an_error(parse, tmp_path, conf_path) -> None:
    secret = write(tmp_path / "secret", "s3cret\n")
    err = error_of(parse, broker_password="other", broker_password_file=str(secret))
    assert str(err) == (
        f"{conf_path}: broker_password_file: give broker_password or broker_password_file, not both"
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "cannot read (No such file or directory)"),
        ("", "empty"),
        ("\n", "empty"),
        ("one\ntwo\n", "holds more than one line (the password must be its only line)"),
        (b"caf\xe9", "not UTF-8 text"),
        ("x" * 5000, "longer than 4096 bytes, so not a password file"),
        ("dir", "not a regular file"),
    ],
)
def test_a_broker_password_file_that_will_not_do_is_an_error_naming_it(
    parse, tmp_path: Path, conf_path: Path, content, problem: str
) -> None:
    secret = tmp_path / "secret"
    if content == "dir":
        secret.mkdir()
    elif isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    err = error_of(parse, broker_password_file=str(secret))
    assert str(err) == f"{conf_path}: broker_password_file: {problem}: {secret}"


def test_the_environment_gives_the_password_when_the_file_names_none(parse) -> None:
    cfg = parse(environ={"SYNKLER_BROKER_PASSWORD": "from-env"})
    assert cfg.broker_password == "from-env"
    assert cfg.secret_files == ()
    assert parse(environ={"SYNKLER_BROKER_PASSWORD": ""}).broker_password == "guest"


def test_a_password_in_the_file_comes_before_the_environment(parse, tmp_path: Path) -> None:
    env = {"SYNKLER_BROKER_PASSWORD": "from-env"}
    assert parse(environ=env, broker_password="written").broker_password == "written"
    secret = write(tmp_path / "secret", "from-file\n")
    assert parse(environ=env, broker_password_file=str(secret)).broker_password == "from-file"


def test_the_config_file_is_a_secret_file_only_when_it_holds_a_password_other_than_guest(
    parse, conf_path: Path
) -> None:
    assert parse(broker_password="s3cret").secret_files == (conf_path,)
    assert parse(broker_password="guest").secret_files == ()
    assert parse().secret_files == ()


# ---------------------------------------------------------------- TLS to the broker


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    from support import tlscerts

    why = tlscerts.available()
    if why is not None:
        pytest.skip(why)
    ca = tlscerts.CertAuthority(tmp_path_factory.mktemp("ca"))
    cert, key = ca.issue("client", "upload@lab", client=True)
    other_cert, other_key = ca.issue("other", "someone", client=True)
    return {"ca": ca.cert, "cert": cert, "key": key, "other_key": other_key}


def test_tls_makes_the_port_5671_unless_one_is_given(parse, certs) -> None:
    assert parse(broker_tls=True, broker_ca_file=str(certs["ca"])).broker_port == 5671
    assert parse(broker_tls=True, broker_port=5999).broker_port == 5999
    assert parse().broker_port == 5672


def test_tls_settings_are_read(parse, certs) -> None:
    cfg = parse(
        broker_tls=True,
        broker_ca_file=str(certs["ca"]),
        broker_cert_file=str(certs["cert"]),
        broker_key_file=str(certs["key"]),
        broker_login="external",
        broker_tls_server_name="rabbit.example",
    )
    assert (cfg.broker_ca_file, cfg.broker_cert_file, cfg.broker_key_file) == (
        certs["ca"],
        certs["cert"],
        certs["key"],
    )
    assert (cfg.broker_login, cfg.broker_tls_server_name) == ("external", "rabbit.example")
    assert cfg.broker_username == ""  # the broker takes the user from the certificate


@pytest.mark.parametrize(
    "keys, key, problem",
    [
        ({"broker_ca_file": "ca"}, "broker_ca_file", "is set but broker_tls is not true"),
        ({"broker_tls_server_name": "x.example"}, "broker_tls_server_name", "is set but broker_tls"),
        ({"broker_login": "external"}, "broker_login", "external needs broker_tls: true"),
        (
            {"broker_tls": True, "broker_cert_file": "cert"},
            "broker_key_file",
            "is required with broker_cert_file",
        ),
        (
            {"broker_tls": True, "broker_key_file": "key"},
            "broker_cert_file",
            "is required with broker_key_file",
        ),
        (
            {"broker_tls": True, "broker_login": "external"},
            "broker_login",
            "external needs a client certificate",
        ),
        (
            {"broker_tls": True, "broker_login": "certificate"},
            "broker_login",
            "must be one of password, external",
        ),
    ],
)
def test_tls_settings_that_do_not_fit_together_are_refused(parse, certs, keys, key, problem) -> None:
    names = {"ca": certs["ca"], "cert": certs["cert"], "key": certs["key"]}
    keys = {
        k: str(names.get(v, v)) if isinstance(v, str) and k.endswith("_file") else v for k, v in keys.items()
    }
    err = error_of(parse, **keys)
    assert err.key == key
    assert problem in err.problem


def test_a_tls_file_that_is_missing_unreadable_or_wrong_is_refused_naming_key_and_file(
    parse, certs, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    err = error_of(parse, broker_tls=True, broker_ca_file=str(missing))
    assert (err.key, err.problem) == ("broker_ca_file", f"file does not exist: {missing}")
    garbage = write(tmp_path / "garbage.pem", "not a certificate\n")
    err = error_of(parse, broker_tls=True, broker_ca_file=str(garbage))
    assert (err.key, err.problem) == ("broker_ca_file", f"no PEM certificate in {garbage}")
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["key"]), broker_key_file=str(certs["key"])
    )
    assert (err.key, err.problem) == ("broker_cert_file", f"no PEM certificate in {certs['key']}")
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(certs["other_key"])
    )
    assert err.key == "broker_key_file"
    assert err.problem == f"{certs['other_key']} is not the key of the certificate {certs['cert']}"


def test_an_encrypted_client_key_is_refused_without_asking_for_a_passphrase(parse, certs, tmp_path) -> None:
    import subprocess

    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", certs["key"], "-aes256", "-passout", "pass:x", "-out", encrypted],
        check=True,
    )
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(encrypted)
    )
    assert (err.key, err.problem) == (
        "broker_key_file",
        f"{encrypted} is encrypted: synkler needs a key without a passphrase",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_key_file_is_refused(parse, certs, tmp_path) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(certs["key"].read_bytes())
    key.chmod(0)
    err = error_of(parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(key))
    assert (err.key, err.problem) == ("broker_key_file", f"cannot read {key}: Permission denied")


def test_external_login_with_authenticate_needs_the_agent_user_named(parse, certs) -> None:
    tls = {
        "broker_tls": True,
        "broker_cert_file": str(certs["cert"]),
        "broker_key_file": str(certs["key"]),
        "broker_login": "external",
        "authenticate": True,
        "id": "lab",
    }
    err = error_of(parse, **tls)
    assert err.key == "broker_username" and "'upload@lab'" in err.problem
    assert parse(**tls, broker_username="upload@lab").broker_username == "upload@lab"
