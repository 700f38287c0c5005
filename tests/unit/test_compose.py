"""docker-compose.yml, the Dockerfile, deploy/stack.sh and docs/configuration.md agree with the
settings classes.

The settings ignore unknown names, so a misspelled variable would silently leave a default in
force; these checks are what catches it. Pure: files and imports only, no Docker, no services.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import pkgutil
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings, SettingsConfigDict

import services
from shared.db.migrate import UPGRADE_COMMAND
from shared.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STACK_SH = ROOT / "deploy" / "stack.sh"
KAFKA_PROPERTIES = ROOT / "deploy" / "kafka" / "server.properties"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

# The processes built from our Dockerfile; each one must get every required connection setting.
APP_SERVICES = ("migrate", "ingest", "segmenter", "api", "webhooks")
# Inside a container, 127.0.0.1 is unreachable from the other containers and from the host.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104

S = TypeVar("S", bound=BaseSettings)


# ---------------------------------------------------------------- settings classes


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class: shared/settings.py and each services/<name>/settings.py."""
    modules = [importlib.import_module("shared.settings")]
    for info in pkgutil.iter_modules(services.__path__):
        if info.ispkg and (ROOT / "services" / info.name / "settings.py").exists():
            modules.append(importlib.import_module(f"services.{info.name}.settings"))
    return [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == module.__name__
    ]


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", "")).upper()


def env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name -> field name, as pydantic-settings reads them."""
    names = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else env_prefix(cls) + field_name
        names[env.upper()] = field_name
    return names


def all_env_names() -> dict[str, type[BaseSettings]]:
    return {name: cls for cls in settings_classes() for name in env_names(cls)}


def classes_run_by(module: str) -> list[type[BaseSettings]]:
    """The settings a `python -m <module>` process reads: the shared ones and its package's."""
    own = [cls for cls in settings_classes() if cls.__module__ == f"{module}.settings"]
    return [ConnectionSettings, *own]


def load_settings(cls: type[S], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> S:
    """Instantiate `cls` from exactly `env`, as the process would see it."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMSEG_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls()


# ---------------------------------------------------------------- compose helpers

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Resolve `${NAME:-default}` to its default, as compose does with an empty environment."""

    def default(match: re.Match[str]) -> str:
        if match.group(2) is None:
            raise ValueError(f"{match.group(0)} has no default; compose needs one to start bare")
        return match.group(2)

    return _INTERPOLATION.sub(default, value.replace("$$", "\0")).replace("\0", "$")


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment in either compose form (mapping or KEY=VALUE list), raw."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {str(name): _env_value(value) for name, value in env.items()}


def _env_value(value: object) -> str:
    """A YAML scalar as compose passes it: `true` as "true", a bare `KEY:` as ""."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolved_environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: interpolate(value) for name, value in environment(service).items()}


def unknown_settings(
    compose: Mapping[str, Any], known: Mapping[str, type[BaseSettings]]
) -> list[str]:
    """One line for each STREAMSEG_* variable in `compose` that no settings class reads."""
    problems = []
    prefixes = sorted({env_prefix(cls) for cls in known.values()}, key=len, reverse=True)
    for service_name, service in (compose.get("services") or {}).items():
        for name in environment(service):
            upper = name.upper()
            if not upper.startswith("STREAMSEG_") or upper in known:
                continue
            prefix = next((p for p in prefixes if upper.startswith(p)), "STREAMSEG_")
            owners = sorted({c.__name__ for c in known.values() if env_prefix(c) == prefix})
            near = difflib.get_close_matches(upper, list(known), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(
                f"{service_name}: {name} is not a field of {', '.join(owners)} "
                f"(prefix {prefix}){hint}"
            )
    return problems


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def module_of(command: object) -> str:
    """`python -m <module> ...` -> module."""
    assert isinstance(command, list), f"command must be in exec form (a list), got {command!r}"
    assert command[:2] == ["python", "-m"], command
    assert len(command) >= 3, command
    return str(command[2])


def one_shot_services() -> set[str]:
    """Services that others wait for to exit successfully; they run once, so no healthcheck."""
    return {
        dep
        for service in SERVICES.values()
        for dep, spec in (service.get("depends_on") or {}).items()
        if isinstance(spec, dict) and spec.get("condition") == "service_completed_successfully"
    }


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return " ".join(test) if isinstance(test, list) else str(test)


def healthcheck_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a healthcheck probes: `host:port` and `-p port` forms."""
    text = healthcheck_text(service)
    return {int(port) for port in re.findall(r"(?::|-p\s+)(\d{2,5})\b", text)}


def connection_endpoints(env: Mapping[str, str]) -> Iterator[tuple[str, str, int]]:
    """(setting, host, port) of every server the connection settings point at."""
    for setting in ("STREAMSEG_DATABASE_URL", "STREAMSEG_REDIS_URL"):
        url = urlsplit(env[setting])
        assert url.hostname is not None, f"{setting}: {env[setting]}"
        assert url.port is not None, f"{setting}: {env[setting]}"
        yield setting, url.hostname, url.port
    for server in env["STREAMSEG_KAFKA_BOOTSTRAP"].split(","):
        host, _, port = server.strip().rpartition(":")
        yield "STREAMSEG_KAFKA_BOOTSTRAP", host, int(port)


# ---------------------------------------------------------------- compose vs settings


def test_every_streamseg_variable_in_compose_names_a_setting() -> None:
    assert unknown_settings(COMPOSE, all_env_names()) == []


class FakeConnection(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMSEG_")

    database_url: str
    redis_url: str


class FakeWorker(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMSEG_WORKER_")

    ops_host: str = "127.0.0.1"
    ops_port: int = 8101


def test_checker_reports_misspelled_variables() -> None:
    known = {name: cls for cls in (FakeConnection, FakeWorker) for name in env_names(cls)}
    worker_env = {
        "STREAMSEG_DATABASE_URL": "postgresql+asyncpg://u:p@db:5432/d",
        "STREAMSEG_WORKER_OPS_HOST": ALL_INTERFACES,
        "STREAMSEG_WORKER_OPS_HOTS": ALL_INTERFACES,
        "KAFKA_NODE_ID": "1",
    }
    other_env = ["STREAMSEG_WORKER_OPS_PORTT=8101", "STREAMSEG_REDIS_URI=redis://r"]
    fake = {
        "services": {"worker": {"environment": worker_env}, "other": {"environment": other_env}}
    }
    problems = unknown_settings(fake, known)
    assert len(problems) == 3, problems
    host, port, redis = problems
    assert host.startswith("worker: STREAMSEG_WORKER_OPS_HOTS is not a field of FakeWorker")
    assert host.endswith("did you mean STREAMSEG_WORKER_OPS_HOST?")
    assert port.startswith("other: STREAMSEG_WORKER_OPS_PORTT is not a field of FakeWorker")
    assert redis.startswith("other: STREAMSEG_REDIS_URI is not a field of FakeConnection")
    assert redis.endswith("did you mean STREAMSEG_REDIS_URL?")
    del worker_env["STREAMSEG_WORKER_OPS_HOTS"]
    other_env[:] = ["STREAMSEG_WORKER_OPS_PORT=8101", "STREAMSEG_REDIS_URL=redis://r"]
    assert unknown_settings(fake, known) == []


def test_the_app_services_run_the_project_image() -> None:
    for name in APP_SERVICES:
        assert name in SERVICES, f"docker-compose.yml has no {name} service"
        assert SERVICES[name].get("build") == ".", f"{name} must build the Dockerfile"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_required_connection_settings_are_set(service: str) -> None:
    env = environment(SERVICES[service])
    required = [
        name
        for name, field_name in env_names(ConnectionSettings).items()
        if ConnectionSettings.model_fields[field_name].is_required()
    ]
    assert required, "ConnectionSettings has no required field; is this still the right class?"
    assert [name for name in required if not env.get(name)] == []


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_environment_is_accepted_by_the_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = resolved_environment(SERVICES[service])
    for cls in classes_run_by(module_of(SERVICES[service]["command"])):
        load_settings(cls, env, monkeypatch)


def test_compose_interpolates_only_known_variables_with_defaults() -> None:
    text = COMPOSE_FILE.read_text()
    known = set(all_env_names()) | script_variables(STACK_SH)
    for match in _INTERPOLATION.finditer(text):
        assert match.group(1) in known, f"{match.group(0)}: not a setting nor a stack.sh variable"
        assert match.group(2) is not None, f"{match.group(0)} needs a default"


# ---------------------------------------------------------------- health and ports


def test_every_service_has_a_healthcheck_or_runs_once() -> None:
    one_shot = one_shot_services()
    for name, service in SERVICES.items():
        if name in one_shot:
            assert service.get("restart") == "no", f"{name} runs once; it must not restart"
        else:
            assert healthcheck_text(service).strip() not in ("", "NONE"), f"{name}: no healthcheck"


def test_depends_on_waits_for_health_or_completion() -> None:
    one_shot = one_shot_services()
    for name, service in SERVICES.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert isinstance(spec, dict), f"{name}: depends_on {dep} needs a condition"
            assert spec.get("condition") == expected, f"{name} -> {dep}"
    for name in APP_SERVICES:
        if name not in one_shot:
            assert "migrate" in (SERVICES[name].get("depends_on") or {}), name


@pytest.mark.parametrize(
    "service",
    [name for name in APP_SERVICES if module_of(SERVICES[name]["command"]).startswith("services.")],
)
def test_service_healthcheck_probes_its_readyz_port(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = resolved_environment(SERVICES[service])
    module = module_of(SERVICES[service]["command"])
    ports: dict[str, int] = {}
    hosts: dict[str, str] = {}
    for cls in classes_run_by(module)[1:]:
        settings = load_settings(cls, env, monkeypatch)
        for field_name in cls.model_fields:
            if field_name == "port" or field_name.endswith("_port"):
                ports[f"{cls.__name__}.{field_name}"] = getattr(settings, field_name)
            if field_name == "host" or field_name.endswith("_host"):
                hosts[f"{cls.__name__}.{field_name}"] = getattr(settings, field_name)
    assert len(ports) == 1, ports
    assert len(hosts) == 1, hosts
    (port,) = ports.values()
    assert list(hosts.values()) == [ALL_INTERFACES], hosts
    urls = re.findall(r"http://[^:/'\"\s]+:(\d+)(/[\w/]*)", healthcheck_text(SERVICES[service]))
    assert urls == [(str(port), "/readyz")], f"{service} healthcheck should GET :{port}/readyz"
    for published in SERVICES[service].get("ports") or []:
        container_port = int(str(published).rsplit(":", 1)[-1].split("/")[0])
        assert container_port == port, f"{service} publishes {published}, listens on {port}"


def test_infrastructure_healthchecks_probe_the_ports_the_services_use() -> None:
    for name in APP_SERVICES:
        for setting, host, port in connection_endpoints(resolved_environment(SERVICES[name])):
            assert host in SERVICES, f"{name}: {setting} points at {host}, not a compose service"
            probed = healthcheck_ports(SERVICES[host])
            assert port in probed, f"{name}: {setting} uses {host}:{port}; healthcheck {probed}"


def test_postgres_credentials_match_the_database_url() -> None:
    pg_env = environment(SERVICES["postgres"])
    for name in APP_SERVICES:
        url = urlsplit(resolved_environment(SERVICES[name])["STREAMSEG_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg"
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.password == pg_env["POSTGRES_PASSWORD"]
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]


# ---------------------------------------------------------------- Kafka


def test_kafka_image_is_a_pinned_4x_tag() -> None:
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", SERVICES["kafka"]["image"])


def test_kafka_is_one_kraft_node_configured_like_the_local_broker() -> None:
    env = resolved_environment(SERVICES["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"], "the image formats KRaft storage with CLUSTER_ID"
    listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    controller_port = listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].rsplit(":", 1)[1]
    assert (
        env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:{controller_port}"
    )
    # Topics are created by the services with their partition counts, never by accident.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # One broker: internal topics with a replication factor above 1 could never be created.
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    # Everything but the networking (addresses and placeholders) as in the local broker.
    local = {}
    for line in KAFKA_PROPERTIES.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and "@" not in value and "listener" not in key:
            local["KAFKA_" + key.strip().upper().replace(".", "_")] = value.strip()
    differ = {k: (env[k], local[k]) for k in env.keys() & local.keys() if env[k] != local[k]}
    assert differ == {}, "compose vs deploy/kafka/server.properties"


def test_kafka_bootstrap_is_an_advertised_listener() -> None:
    listeners = resolved_environment(SERVICES["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    advertised = {listener.split("://", 1)[1] for listener in listeners.split(",")}
    for name in APP_SERVICES:
        bootstrap = resolved_environment(SERVICES[name])["STREAMSEG_KAFKA_BOOTSTRAP"]
        assert set(bootstrap.split(",")) <= advertised, (name, bootstrap, advertised)


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_command() -> list[str]:
    entry: list[str] = []
    cmd: list[str] = []
    for instruction, args in dockerfile_instructions():
        if instruction in ("CMD", "ENTRYPOINT"):
            parsed = json.loads(args)  # exec form: signals reach Python, not a shell
            assert isinstance(parsed, list), args
            if instruction == "CMD":
                cmd = [str(a) for a in parsed]
            else:
                entry = [str(a) for a in parsed]
    return entry + cmd


def assert_runnable(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module}: no __main__"


def test_dockerfile_default_command_runs_an_existing_module() -> None:
    command = dockerfile_command()
    assert_runnable(module_of(command))


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_command_runs_an_existing_module(service: str) -> None:
    assert_runnable(module_of(SERVICES[service]["command"]))


def test_migrate_runs_the_upgrade_command_the_services_ask_for() -> None:
    from shared.db.__main__ import cli

    assert SERVICES["migrate"]["command"] == UPGRADE_COMMAND.split()
    assert "upgrade" in [c.name for c in cli.registered_commands]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users, "no USER: the services would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_copies_exist_and_are_in_the_build_context() -> None:
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    allowlist = "*" in ignore
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                name = source.rstrip("/")
                if allowlist:
                    assert {f"!{name}", f"!{name}/"} & set(ignore), f".dockerignore hides {name}"


# ---------------------------------------------------------------- stack.sh and the docs


def script_variables(script: Path) -> set[str]:
    """STREAMSEG_* variables a shell script reads as `${NAME:-...}`."""
    return set(re.findall(r"\$\{(STREAMSEG_[A-Z0-9_]+):-", script.read_text()))


def test_stack_sh_prints_and_honours_the_required_connection_settings() -> None:
    text = STACK_SH.read_text()
    for name, field_name in env_names(ConnectionSettings).items():
        if ConnectionSettings.model_fields[field_name].is_required():
            assert f"export {name}=" in text, f"stack.sh env does not print {name}"
            assert f'[ -n "${{{name}:-}}" ]' in text, f"stack.sh ignores an existing {name}"


_DOC_ROW = re.compile(
    r"^\|\s*`(STREAMSEG_[A-Z0-9_]+)`\s*\|\s*(required|\(none\)|`[^`]*`)\s*\|", re.M
)


def documented_defaults() -> dict[str, str]:
    """Variable -> its default cell (`required` or the value between backticks)."""
    return {
        name: cell.strip("`") if cell != "required" else cell
        for name, cell in _DOC_ROW.findall(CONFIG_DOC.read_text())
    }


def test_configuration_doc_has_a_row_for_every_setting() -> None:
    rows = documented_defaults()
    missing = sorted(set(all_env_names()) - rows.keys())
    assert missing == [], f"add to docs/configuration.md: {missing}"


def test_configuration_doc_has_no_stale_rows() -> None:
    scripts: set[str] = set()
    for script in (ROOT / "deploy").glob("*.sh"):
        scripts |= script_variables(script)
    stale = sorted(documented_defaults().keys() - set(all_env_names()) - scripts)
    assert stale == [], f"docs/configuration.md documents variables nothing reads: {stale}"


def test_configuration_doc_covers_the_stack_sh_variables() -> None:
    text = CONFIG_DOC.read_text()
    assert sorted(n for n in script_variables(STACK_SH) if f"`{n}`" not in text) == []


def test_configuration_doc_defaults_are_the_class_defaults() -> None:
    rows = documented_defaults()
    for name, cls in all_env_names().items():
        if name not in rows:
            continue  # test_configuration_doc_has_a_row_for_every_setting names it
        field = cls.model_fields[env_names(cls)[name]]
        cell = rows[name]
        if field.is_required():
            assert cell == "required", f"{name} has no default; the doc says {cell!r}"
            continue
        assert cell != "required", f"{name} has a default; the doc says required"
        assert field.annotation is not None, name
        if cell == "(none)":
            assert field.get_default() is None, f"{name}: doc says no default, the class has one"
            continue
        raw: Any = json.loads(cell) if cell.startswith(("{", "[")) else cell
        documented = TypeAdapter(field.annotation).validate_python(raw)
        actual = field.get_default(call_default_factory=True)
        assert documented == actual, f"{name}: doc says {cell!r}, the class has {actual!r}"
