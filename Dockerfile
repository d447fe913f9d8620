# The `codelupe` binary: every stage but the trainer, which links libtorch and has its
# own image (stages/trainer/Dockerfile).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY setup setup
# The same package list as a developer's machine (the rust image has most of it).
RUN bash setup/deps.sh run && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin codelupe

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/codelupe /usr/local/bin/codelupe
COPY topology.yaml /etc/codelupe/topology.yaml
COPY schemas /etc/codelupe/schemas
WORKDIR /etc/codelupe
ENTRYPOINT ["codelupe"]
