"""The connection security settings: secrets from files, the checks that stop a process at
start, and the TLS contexts and client options they become. Pure: files, no servers
(tests/integration/test_secure_connections.py connects with them)."""

from __future__ import annotations

import ast
import os
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.security import PLAINTEXT, KafkaSecurity, PostgresTls, RedisTls
from shared.settings import ConnectionSettings, DatabaseSettings
from tests.support.tls import Certificates, make_certificates

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "STREAMSEG_DATABASE_URL": "postgresql+asyncpg://u:p@db.invalid:5432/d",
    "STREAMSEG_REDIS_URL": "redis://redis.invalid:6379/0",
    "STREAMSEG_KAFKA_BOOTSTRAP": "kafka.invalid:9092",
}
SECRET = "hunter2-Secret"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment, as a dict the test fills before calling `load`."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMSEG_"):
            monkeypatch.delenv(name)
    return dict(BASE)


def load(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ConnectionSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ConnectionSettings()


def refused(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    with pytest.raises(ValidationError) as info:
        load(env, monkeypatch)
    return str(info.value)


def secret(tmp_path: Path, value: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(value)
    return str(path)


SASL = {
    "STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMSEG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMSEG_KAFKA_SASL_USERNAME": "streamseg",
    "STREAMSEG_KAFKA_SASL_PASSWORD": SECRET,
}


# ---------------------------------------------------------------- defaults


def test_the_defaults_connect_as_before_these_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = load(env, monkeypatch)
    assert conn.kafka_security() == PLAINTEXT
    assert PLAINTEXT.client_options() == {"security_protocol": "PLAINTEXT"}
    assert conn.postgres_tls() == PostgresTls("prefer")
    assert conn.postgres_tls().connect_ssl() == "prefer"  # asyncpg's own default
    assert conn.redis_tls().connection_options(conn.redis_url) == {}


def test_an_empty_optional_setting_counts_as_unset(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "STREAMSEG_DATABASE_PASSWORD_FILE",
        "STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE",
        "STREAMSEG_REDIS_SSL_CA_FILE",
        "STREAMSEG_KAFKA_SSL_CA_FILE",
        "STREAMSEG_KAFKA_SASL_MECHANISM",
        "STREAMSEG_KAFKA_SASL_PASSWORD",
        "STREAMSEG_KAFKA_SASL_PASSWORD_FILE",
    ):
        env[name] = ""
    conn = load(env, monkeypatch)
    assert conn.kafka_security() == PLAINTEXT
    assert conn.postgres_tls() == PostgresTls("prefer")


# ---------------------------------------------------------------- secrets from files

FILE_SETTINGS = [
    ("STREAMSEG_DATABASE_URL", "postgresql+asyncpg://u:pw@db.example:5432/d", "database_url"),
    ("STREAMSEG_REDIS_URL", "rediss://:pw@redis.example:6380/0", "redis_url"),
    ("STREAMSEG_KAFKA_SASL_USERNAME", "api-key", "kafka_sasl_username"),
    ("STREAMSEG_KAFKA_SASL_PASSWORD", SECRET, "kafka_sasl_password"),
]


@pytest.mark.parametrize(("name", "value", "field"), FILE_SETTINGS)
@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_a_secret_is_read_from_its_file_without_the_final_line_break(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    value: str,
    field: str,
    ending: str,
) -> None:
    env |= SASL
    env.pop(name, None)
    env[name + "_FILE"] = secret(tmp_path, value + ending)
    conn = load(env, monkeypatch)
    read = getattr(conn, field)
    assert (read if isinstance(read, str) else read.get_secret_value()) == value


def test_the_kafka_key_password_is_read_from_its_file(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: Certificates
) -> None:
    key = tmp_path / "client-encrypted.key"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(certs.client_key), "-aes256"),
            *("-passout", f"pass:{SECRET}", "-out", str(key)),
        ],
        check=True,
        capture_output=True,
    )
    env |= {
        "STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMSEG_KAFKA_SSL_CA_FILE": str(certs.ca),
        "STREAMSEG_KAFKA_SSL_CERT_FILE": str(certs.client_cert),
        "STREAMSEG_KAFKA_SSL_KEY_FILE": str(key),
        "STREAMSEG_KAFKA_SSL_KEY_PASSWORD_FILE": secret(tmp_path, SECRET + "\n"),
    }
    assert load(env, monkeypatch).kafka_security().key_password == SECRET
    env["STREAMSEG_KAFKA_SSL_KEY_PASSWORD_FILE"] = secret(tmp_path, "wrong", "wrong")
    assert "cannot load the TLS files" in refused(env, monkeypatch)


@pytest.mark.parametrize(
    "name",
    [
        "STREAMSEG_DATABASE_URL",
        "STREAMSEG_DATABASE_PASSWORD",
        "STREAMSEG_REDIS_URL",
        "STREAMSEG_KAFKA_SASL_USERNAME",
        "STREAMSEG_KAFKA_SASL_PASSWORD",
        "STREAMSEG_KAFKA_SSL_KEY_PASSWORD",
    ],
)
def test_a_value_and_its_file_both_set_is_an_error_naming_both(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    env[name] = env.get(name, SECRET)
    env[name + "_FILE"] = secret(tmp_path, SECRET)
    message = refused(env, monkeypatch)
    assert f"{name} and {name}_FILE are both set" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "No such file"), ("", "is empty"), ("\n", "is empty"), (b"\xff\xfe", "cannot read")],
)
def test_a_missing_empty_or_unreadable_file_is_an_error_naming_the_setting_and_path(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    content: str | bytes | None,
    expected: str,
) -> None:
    path = tmp_path / "kafka-password"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    env |= SASL
    del env["STREAMSEG_KAFKA_SASL_PASSWORD"]
    env["STREAMSEG_KAFKA_SASL_PASSWORD_FILE"] = str(path)
    message = refused(env, monkeypatch)
    assert "STREAMSEG_KAFKA_SASL_PASSWORD_FILE" in message
    assert str(path) in message
    assert expected in message


def test_the_database_password_goes_into_the_url(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env["STREAMSEG_DATABASE_URL"] = "postgresql+asyncpg://streamseg@db.example:5432/d"
    env["STREAMSEG_DATABASE_PASSWORD_FILE"] = secret(tmp_path, "p@ss/word:1\n")
    conn = load(env, monkeypatch)
    assert conn.database_url == "postgresql+asyncpg://streamseg:p%40ss%2Fword%3A1@db.example:5432/d"
    # DatabaseSettings (python -m shared.db, the keys tool) reads it the same way.
    assert DatabaseSettings().database_url == conn.database_url


def test_a_password_in_the_url_and_in_the_setting_is_an_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env["STREAMSEG_DATABASE_PASSWORD"] = SECRET
    message = refused(env, monkeypatch)
    assert "STREAMSEG_DATABASE_URL carries a password" in message
    assert "STREAMSEG_DATABASE_PASSWORD" in message


def test_errors_name_settings_never_their_values(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env |= SASL
    env["STREAMSEG_KAFKA_SASL_PASSWORD_FILE"] = secret(tmp_path, SECRET)
    env["STREAMSEG_DATABASE_URL"] = f"postgresql+asyncpg://u:{SECRET}@db.invalid/d"
    message = refused(env, monkeypatch)
    assert SECRET not in message
    assert "STREAMSEG_KAFKA_SASL_PASSWORD" in message
    env["STREAMSEG_DATABASE_URL"] = f"postgresql+asyncpg://u:{SECRET}@db.invalid:port/d"
    assert SECRET not in refused(env, monkeypatch)


# ---------------------------------------------------------------- contradictions


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "SASL_SSL needs STREAMSEG_KAFKA_SASL_MECHANISM, STREAMSEG_KAFKA_SASL_USERNAME, "
            "STREAMSEG_KAFKA_SASL_PASSWORD",
        ),
        (
            {k: v for k, v in SASL.items() if not k.endswith("USERNAME")},
            "SASL_SSL needs STREAMSEG_KAFKA_SASL_USERNAME (",
        ),
        (
            {k: v for k, v in SASL.items() if not k.endswith("PROTOCOL")},
            "STREAMSEG_KAFKA_SASL_MECHANISM, STREAMSEG_KAFKA_SASL_USERNAME, "
            "STREAMSEG_KAFKA_SASL_PASSWORD set, but STREAMSEG_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"
            " does not use SASL",
        ),
        (
            {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL", "STREAMSEG_KAFKA_SASL_USERNAME": "u"},
            "STREAMSEG_KAFKA_SECURITY_PROTOCOL=SSL does not use SASL",
        ),
        (
            {"STREAMSEG_KAFKA_SSL_CA_FILE": "/etc/ssl/ca.pem"},
            "STREAMSEG_KAFKA_SSL_CA_FILE set, but STREAMSEG_KAFKA_SECURITY_PROTOCOL=PLAINTEXT "
            "does not use TLS",
        ),
        (
            SASL
            | {
                "STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "STREAMSEG_KAFKA_SSL_CERT_FILE": "/c.pem",
            },
            "SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL", "STREAMSEG_KAFKA_SSL_KEY_FILE": "/k"},
            "STREAMSEG_KAFKA_SSL_KEY_FILE is set without STREAMSEG_KAFKA_SSL_CERT_FILE",
        ),
        (
            {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL", "STREAMSEG_KAFKA_SSL_CA_FILE": "/no/ca"},
            "STREAMSEG_KAFKA_SSL_CA_FILE: cannot read /no/ca",
        ),
        (
            {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'",
        ),
        (SASL | {"STREAMSEG_KAFKA_SASL_MECHANISM": "GSSAPI"}, "'PLAIN', 'SCRAM-SHA-256'"),
        (
            {"STREAMSEG_REDIS_SSL_CA_FILE": "/etc/ssl/ca.pem"},
            "STREAMSEG_REDIS_SSL_CA_FILE is set but STREAMSEG_REDIS_URL is not a rediss:// URL",
        ),
        (
            {
                "STREAMSEG_REDIS_URL": "rediss://r.invalid:6380/0",
                "STREAMSEG_REDIS_SSL_CA_FILE": "/no/ca",
            },
            "STREAMSEG_REDIS_SSL_CA_FILE: cannot read /no/ca",
        ),
        (
            {"STREAMSEG_DATABASE_URL": "postgresql+asyncpg://u:p@db.invalid/d?sslmode=require"},
            "STREAMSEG_DATABASE_URL sets sslmode: use STREAMSEG_DATABASE_SSLMODE",
        ),
        (
            {"STREAMSEG_DATABASE_URL": "postgresql+asyncpg://u:p@db.invalid/d?ssl=true"},
            "STREAMSEG_DATABASE_URL sets ssl: use",
        ),
        (
            {"STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE": "/etc/ssl/ca.pem"},
            "STREAMSEG_DATABASE_SSLMODE=prefer checks no certificate",
        ),
        (
            {
                "STREAMSEG_DATABASE_SSLMODE": "verify-full",
                "STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE": "/no/ca",
            },
            "STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE: cannot read /no/ca",
        ),
        ({"STREAMSEG_DATABASE_SSLMODE": "allow"}, "'disable', 'prefer', 'require'"),
        (
            {"STREAMSEG_DATABASE_URL": f"postgresql+asyncpg://u:{SECRET}@h:port/d"},
            "STREAMSEG_DATABASE_URL is not a URL",
        ),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[:40],
)
def test_settings_that_contradict_or_cannot_load_stop_the_process_naming_them(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    expected: str,
) -> None:
    env |= settings
    assert expected in refused(env, monkeypatch)


@pytest.mark.parametrize(
    "name",
    ["STREAMSEG_KAFKA_SSL_CA_FILE", "STREAMSEG_REDIS_SSL_CA_FILE", "ROOT_CERT"],
)
def test_a_file_that_is_not_a_certificate_is_refused_at_start(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    junk = secret(tmp_path, "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    if name == "ROOT_CERT":
        env |= {"STREAMSEG_DATABASE_SSLMODE": "verify-ca"}
        name = "STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE"
    elif "KAFKA" in name:
        env |= {"STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL"}
    else:
        env |= {"STREAMSEG_REDIS_URL": "rediss://r.invalid:6380/0"}
    env[name] = junk
    message = refused(env, monkeypatch)
    assert f"{name}: cannot load the TLS files" in message


# ---------------------------------------------------------------- what the clients get


def test_sasl_ssl_gives_aiokafka_a_verifying_context_and_the_credentials(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, certs: Certificates
) -> None:
    env |= SASL | {"STREAMSEG_KAFKA_SSL_CA_FILE": str(certs.ca)}
    options = load(env, monkeypatch).kafka_security().client_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "streamseg",
        "sasl_plain_password": SECRET,
    }
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert any("StreamSeg test ca" in str(c["subject"]) for c in context.get_ca_certs())


def test_kafka_options_per_protocol(certs: Certificates) -> None:
    plain_sasl = KafkaSecurity(
        "SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
    )
    assert "ssl_context" not in plain_sasl.client_options()
    assert plain_sasl.client_options()["sasl_mechanism"] == "PLAIN"
    mutual = KafkaSecurity(
        "SSL",
        ca_file=certs.ca,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
        check_hostname=False,
    )
    options = mutual.client_options()
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["ssl_context"].check_hostname is False
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # No CA file: the system's store, as for a service with public certificates.
    assert KafkaSecurity("SSL").client_options()["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_passwords_stay_out_of_reprs() -> None:
    security = KafkaSecurity("SASL_SSL", sasl_password=SECRET, key_password=SECRET)
    assert SECRET not in repr(security)


@pytest.mark.parametrize(
    ("mode", "with_root", "verify_mode", "check_hostname"),
    [
        ("require", False, ssl.CERT_NONE, False),
        ("require", True, ssl.CERT_REQUIRED, False),  # libpq: a root cert makes it verify-ca
        ("verify-ca", True, ssl.CERT_REQUIRED, False),
        ("verify-ca", False, ssl.CERT_REQUIRED, False),  # the system's store
        ("verify-full", True, ssl.CERT_REQUIRED, True),
        ("verify-full", False, ssl.CERT_REQUIRED, True),
    ],
)
def test_postgres_sslmodes_become_asyncpg_contexts(
    certs: Certificates, mode: str, with_root: bool, verify_mode: int, check_hostname: bool
) -> None:
    tls = PostgresTls(mode, certs.ca if with_root else None)  # type: ignore[arg-type]
    context = tls.connect_ssl()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == verify_mode
    assert context.check_hostname is check_hostname
    if with_root:
        assert any("StreamSeg test ca" in str(c["subject"]) for c in context.get_ca_certs())


def test_postgres_disable_and_prefer_are_asyncpg_modes() -> None:
    assert PostgresTls("disable").connect_ssl() is False
    assert PostgresTls("prefer").connect_ssl() == "prefer"


def test_redis_tls_options_apply_to_rediss_urls_only(certs: Certificates) -> None:
    tls = RedisTls(certs.ca, check_hostname=False)
    assert tls.connection_options("rediss://:pw@r.example:6380/0") == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(certs.ca),
        "ssl_check_hostname": False,
    }
    assert RedisTls().connection_options("rediss://r.example:6380/0")["ssl_ca_certs"] is None
    assert RedisTls().connection_options("redis://r.example:6379/0") == {}
    with pytest.raises(ValueError, match="not rediss://"):
        tls.connection_options("redis://r.example:6379/0")


# ---------------------------------------------------------------- every client gets it

# Factory -> the keyword that carries the connection's security.
FACTORIES = {
    "make_consumer": "security",
    "make_producer": "security",
    "make_admin": "security",
    "ensure_topics": "security",
    "topic_retention_ms": "security",
    "delete_topics": "security",
    "check_kafka": "security",
    "OutboxPublisher": "security",
    "KafkaPublisher": "security",
    "create_engine": "tls",
    "make_redis": "tls",
}
# Made directly, a client must at least take the options of a security value (`**...`).
DIRECT = {
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "AIOKafkaAdminClient",
    "create_async_engine",
    "from_url",
    "connect",
    "create_pool",
}
# The code that runs against configured components. The other tests make plaintext clients
# of the local stack, or of the private copies that the fault and chaos tests break.
CHECKED = ("shared", "services", "bench", "tests/support")
# The factory itself, which passes the options on through connect_args.
FACTORY_MODULES = {("shared/db/engine.py", "create_async_engine")}


def unsecured_calls(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        keywords = {k.arg for k in node.keywords}
        # A factory is a function imported by name (not a method such as admin.delete_topics).
        if isinstance(func, ast.Name) and name in FACTORIES and FACTORIES[name] not in keywords:
            found.append((node.lineno, name))
        elif (
            name in DIRECT
            and None not in keywords
            and not (name == "connect" and "ssl" in keywords)
        ):
            owner = func.value if isinstance(func, ast.Attribute) else None
            owner_name = getattr(owner, "id", getattr(owner, "attr", ""))
            if name == "connect" and owner_name != "asyncpg":
                continue
            if name == "from_url" and owner_name not in ("Redis", "BlockingConnectionPool"):
                continue
            found.append((node.lineno, name))
    return found


def test_the_checker_finds_a_client_made_without_its_security() -> None:
    source = (
        "make_producer(b, client_id='x')\n"
        "make_producer(b, security=s)\n"
        "create_engine(url, schema)\n"
        "Redis.from_url(url, **tls.connection_options(url))\n"
        "AIOKafkaConsumer(bootstrap_servers=b)\n"
        "asyncpg.connect(dsn)\n"
        "RedisPipe.from_url(url, 1.0)\n"
    )
    assert unsecured_calls(source) == [
        (1, "make_producer"),
        (3, "create_engine"),
        (5, "AIOKafkaConsumer"),
        (6, "connect"),
    ]


def test_every_client_the_services_tools_and_benchmarks_make_gets_its_security() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for top in CHECKED
        for path in sorted((ROOT / top).rglob("*.py"))
        for line, name in unsecured_calls(path.read_text())
        if (str(path.relative_to(ROOT)), name) not in FACTORY_MODULES
    ]
    assert offenders == [], (
        "pass security=conn.kafka_security() / tls=conn.postgres_tls() / "
        f"tls=conn.redis_tls(): {offenders}"
    )
