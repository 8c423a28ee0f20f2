# translation-jobs: the service binary on a distroless base (no shell, non-root).
#
#   docker build -t translation-jobs:dev .
#   docker run --rm -p 50051:50051 -p 8000:8000 \
#     -e DATABASE_URL=postgres://... -e REDIS_URL=redis://... translation-jobs:dev
#
# The migrations are embedded in the binary (sqlx::migrate! at compile time) and run at
# start-up, or with `translation-jobs migrate`: migrations/ is needed to build, not to run,
# and is not copied into the runtime image.

FROM rust:1-bookworm AS build
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

# glibc and libgcc, CA certificates, user nonroot (65532); nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="translation-jobs" \
      org.opencontainers.image.description="gRPC service for translation jobs: PostgreSQL, transactional outbox, Redis queue" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /usr/local/bin/translation-jobs /usr/local/bin/translation-jobs
USER 65532:65532
# gRPC; HTTP (/metrics, /healthz, /readyz, JSON API).
EXPOSE 50051 8000
ENTRYPOINT ["/usr/local/bin/translation-jobs"]
CMD ["serve"]
