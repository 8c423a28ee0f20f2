#!/usr/bin/env python3
"""Checks Dockerfile, .dockerignore and docker-compose.yml without a Docker engine.

What hadolint and `docker-compose config` (run by scripts/check_chart.sh) do not
know about this repository:
  - docker-compose.yml loads as YAML and has the services, images and settings the
    stack depends on (Redis with AOF and noeviction, health-gated depends_on, ...);
  - every COPY source of the Dockerfile exists and is not excluded by .dockerignore
    (but the `prebuilt` stage's, whose build context holds only the binary);
  - base images are pinned by digest (ARG defaults expanded), the build stage is
    rust:1-bookworm and the `runtime` stage's default base distroless cc-debian12;
  - the `runtime` stage runs no command (its base may have no shell), runs as a
    non-root user, exposes 50051 and 8000 and starts the binary in exec form;
  - both ways to build end on it: the `prebuilt` stage and the last (default) stage
    are FROM runtime and add only the binary, from the context or the build stage.

Usage: check_container_files.py [REPO_ROOT]. Exits 1 on any problem.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

import yaml

problems: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instruction, _, args = current.partition(" ")
        out.append((instruction.upper(), args.strip()))
        current = ""
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/").removeprefix("./")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        hit = fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*")
        if pattern.startswith("**/"):
            hit = hit or fnmatch.fnmatch(path, pattern[3:]) or fnmatch.fnmatch(path, "*/" + pattern[3:])
        if hit and not negate:
            return True
    return False


def check_dockerfile(root: Path) -> None:
    dockerfile = root / "Dockerfile"
    ignore_file = root / ".dockerignore"
    check(dockerfile.is_file(), "Dockerfile missing")
    check(ignore_file.is_file(), ".dockerignore missing")
    if not dockerfile.is_file() or not ignore_file.is_file():
        return
    patterns = [line.strip() for line in ignore_file.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for must in ("target", ".git", ".tools"):
        check(ignored(must, patterns), f".dockerignore does not exclude {must}/")

    instructions = dockerfile_instructions(dockerfile.read_text())
    # Global ARGs (before the first FROM) and their defaults, for FROM lines.
    defaults: dict[str, str] = {}
    for name, args in instructions:
        if name == "FROM":
            break
        if name == "ARG":
            key, _, value = args.partition("=")
            defaults[key.strip()] = value.strip().strip('"')

    def expand(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)

    # Stages: (alias, base as written, base expanded, instructions after FROM).
    stages: list[tuple[str, str, str, list[tuple[str, str]]]] = []
    for name, args in instructions:
        if name == "FROM":
            words = args.split()
            alias = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append((alias, words[0], expand(words[0]), []))
        elif stages:
            stages[-1][3].append((name, args))
    check(len(stages) >= 2, "Dockerfile is not multi-stage")
    if not stages:
        return
    check(stages[0][2].startswith("rust:1-bookworm"), "build stage is not FROM rust:1-bookworm")
    aliases: set[str] = set()
    for alias, written, base, _ in stages:
        if base.lower() not in aliases and base != "scratch":
            check("@sha256:" in base, f"base image {written!r} ({base}) is not pinned by digest")
        if alias:
            aliases.add(alias)

    by_alias = {alias: (base, body) for alias, _, base, body in stages if alias}
    if "runtime" not in by_alias:
        problems.append("no stage named runtime (the one both ways to build end on)")
        return
    base, runtime = by_alias["runtime"]
    check(base.startswith("gcr.io/distroless/cc-debian12") or base.startswith("debian:bookworm-slim"),
          f"runtime stage base {base!r} is neither distroless cc-debian12 nor debian:bookworm-slim")
    check(not any(name == "RUN" for name, _ in runtime),
          "the runtime stage has a RUN: its base (distroless) has no shell")

    binary = "/usr/local/bin/translation-jobs"
    def adds_only_the_binary(body: list[tuple[str, str]], source: str, label: str) -> None:
        copies = [args for name, args in body if name == "COPY"]
        others = [name for name, _ in body if name not in ("COPY",)]
        check(len(copies) == 1 and copies[0].split() == source.split() + [binary] and not others,
              f"{label} does not just COPY {source} {binary}: {body}")
    prebuilt = [(alias, base, body) for alias, _, base, body in stages if alias == "prebuilt"]
    check(len(prebuilt) == 1 and prebuilt[0][1] == "runtime", "no stage `prebuilt` FROM runtime")
    if prebuilt:
        adds_only_the_binary(prebuilt[0][2], "translation-jobs", "the prebuilt stage")
    last_alias, _, last_base, last_body = stages[-1]
    check(last_base == "runtime", f"the last (default) stage is FROM {last_base}, not runtime")
    adds_only_the_binary(last_body, f"--from={stages[0][0] or 'build'} {binary}", "the last stage")

    for alias, _, _, body in stages:
        if alias == "prebuilt":
            continue  # its build context is a directory holding only the binary
        for name, args in body:
            if name == "COPY" and "--from=" not in args:
                words = [w for w in args.split() if not w.startswith("--")]
                for source in words[:-1]:
                    check((root / source).exists(), f"COPY source {source} does not exist")
                    check(not ignored(source, patterns), f"COPY source {source} is excluded by .dockerignore")
            if name == "RUN" and "cargo build" in args:
                check("--locked" in args and "--release" in args and "--bin translation-jobs" in args,
                      f"cargo build without --release --locked --bin translation-jobs: {args}")

    final_names = {name: args for name, args in runtime}
    user = final_names.get("USER", "")
    check(user != "" and user.split(":")[0] not in ("0", "root"), "runtime stage does not set a non-root USER")
    exposed = set(final_names.get("EXPOSE", "").split())
    check({"50051", "8000"} <= exposed, f"runtime stage exposes {sorted(exposed)}, not 50051 and 8000")
    entrypoint = final_names.get("ENTRYPOINT", "")
    try:
        entry = json.loads(entrypoint)
    except json.JSONDecodeError:
        entry = None
    check(isinstance(entry, list) and entry and entry[0] == binary,
          f"ENTRYPOINT is not the binary in exec form: {entrypoint!r}")
    check(final_names.get("CMD", "").replace(" ", "") == '["serve"]', 'CMD is not ["serve"]')


def check_compose(root: Path) -> None:
    path = root / "docker-compose.yml"
    try:
        compose = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        problems.append(f"docker-compose.yml: {error}")
        return
    services = compose.get("services") or {}
    missing = [name for name in ("postgres", "redis", "translation-jobs", "worker") if name not in services]
    for name in missing:
        problems.append(f"docker-compose.yml: service {name} missing")
    if missing:
        return
    check(str(services["postgres"].get("image", "")).startswith("postgres:15"), "postgres is not postgres:15")
    redis = services["redis"]
    check(str(redis.get("image", "")).startswith("redis:7"), "redis is not redis:7")
    command = " ".join(map(str, redis.get("command", [])))
    check("--appendonly yes" in command, "redis runs without --appendonly yes")
    check("--maxmemory-policy noeviction" in command, "redis runs without --maxmemory-policy noeviction")

    app = services["translation-jobs"]
    build = app.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context", ".")
    check((root / context / "Dockerfile").is_file(), "translation-jobs: build context has no Dockerfile")
    worker = services["worker"]
    check(str(worker.get("image", "")).startswith("python:3.11-slim"), "worker is not python:3.11-slim")
    check(any("examples/worker" in str(v) for v in worker.get("volumes", [])), "worker does not mount examples/worker")
    check((root / "examples/worker/worker.py").is_file(), "examples/worker/worker.py missing")
    for name, service in (("translation-jobs", app), ("worker", worker)):
        env = service.get("environment") or {}
        for var in ("DATABASE_URL", "REDIS_URL", "TRANSLATION_QUEUE"):
            check(var in env, f"{name}: {var} not set")
        depends = service.get("depends_on") or {}
        for dependency in ("postgres", "redis"):
            condition = (depends.get(dependency) or {}).get("condition") if isinstance(depends, dict) else None
            check(condition == "service_healthy", f"{name}: depends_on {dependency} is not service_healthy")
    for name, service in services.items():
        for dependency in (service.get("depends_on") or {}):
            check(dependency in services, f"{name}: depends_on unknown service {dependency}")
        if name in ("postgres", "redis"):
            check("healthcheck" in service, f"{name}: no healthcheck")
    check(app.get("environment", {}).get("TRANSLATION_QUEUE") == worker.get("environment", {}).get("TRANSLATION_QUEUE"),
          "the service and the worker use different TRANSLATION_QUEUE")
    # Published ports answer on the host's loopback only: the stack is for
    # development, with fixed passwords and the service without keys.
    for name, service in services.items():
        for port in service.get("ports") or []:
            published = port if isinstance(port, str) else str((port or {}).get("host_ip", "")) + ":"
            check(str(published).startswith("127.0.0.1:"),
                  f"{name}: port {port} is published on every interface, not 127.0.0.1")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    check_dockerfile(root)
    check_compose(root)
    for problem in problems:
        print(f"  ERROR {problem}")
    if problems:
        print(f"FAIL container files: {len(problems)} problem(s)")
        return 1
    print("PASS container files: Dockerfile stages (runtime, prebuilt, default), COPY sources vs .dockerignore, "
          "runtime user/ports/entrypoint; docker-compose.yml services and settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
