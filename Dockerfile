# translation-jobs: the service binary on a distroless base (no shell, non-root).
#
# One runtime stage (`runtime`: labels, user, ports, entrypoint; no RUN, so no shell is
# needed), two ways to put the binary on it:
#
#   Where a registry is reachable, from source (the default target, the last stage):
#     docker build -t translation-jobs:dev .
#   With a binary built on the host (Debian 12, glibc) and any base, for instance the
#   locally made one of scripts/image.sh, where no registry is reachable: the build
#   context is a directory holding only the binary, named translation-jobs.
#     podman build --target prebuilt --build-arg RUNTIME_BASE=<image> -f Dockerfile <dir>
#   scripts/image.sh does the second (docs/image.md).
#
#   docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:8000:8000 \
#     -e DATABASE_URL=postgres://... -e REDIS_URL=redis://... \
#     -e AUTH_JWT_SECRET=<32 bytes or more> translation-jobs:dev
# (Inside the container the service listens on every interface, so without a key it
# starts only with -e AUTH_MODE=none: see docs/security.md.)
#
# Base images are pinned by digest, so a rebuild gets the bytes that were reviewed.
# To move to newer ones: `docker buildx imagetools inspect rust:1-bookworm` (and the
# distroless tag), review, and replace the digests.
#
# The migrations are embedded in the binary (sqlx::migrate! at compile time) and run at
# start-up, or with `translation-jobs migrate`: migrations/ is needed to build, not to run,
# and is not copied into the runtime image.

# glibc and libgcc, CA certificates, user nonroot (65532); nothing else. scripts/image.sh
# passes a locally made base with the same packages where gcr.io is out of reach.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS build
WORKDIR /src

# Dependencies first, in their own layer, rebuilt only when Cargo.toml or Cargo.lock
# change: compile the manifest against stub sources, then throw the stubs away.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > build.rs \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin translation-jobs \
 && rm -rf build.rs src

# The crate itself. build.rs compiles proto/ with the protoc that ships in a crate.
COPY build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# Cargo compares modification times: make sure the real sources count as newer than
# the stubs compiled above, whatever times COPY gave them.
RUN touch build.rs src/main.rs src/lib.rs \
 && cargo build --release --locked --bin translation-jobs \
 && cp target/release/translation-jobs /usr/local/bin/translation-jobs

# The runtime, shared by both ways to build. Files COPYed below stay root's: the process
# (65532) cannot change its own binary.
FROM ${RUNTIME_BASE} AS runtime
# Set by scripts/image.sh (the crate's version, the commit); empty when built by hand.
ARG VERSION=""
ARG REVISION=""
LABEL org.opencontainers.image.title="translation-jobs" \
      org.opencontainers.image.description="gRPC service for translation jobs: PostgreSQL, transactional outbox, Redis queue" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532
# gRPC; HTTP (/metrics, /healthz, /readyz, JSON API).
EXPOSE 50051 8000
ENTRYPOINT ["/usr/local/bin/translation-jobs"]
CMD ["serve"]

# A binary built elsewhere: the build context holds only it (scripts/image.sh).
FROM runtime AS prebuilt
COPY translation-jobs /usr/local/bin/translation-jobs

# The default target: the binary built above.
FROM runtime
COPY --from=build /usr/local/bin/translation-jobs /usr/local/bin/translation-jobs
