# The `codelupe` binary: every stage but the trainer, which links libtorch and has its
# own image (stages/trainer/Dockerfile).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin codelupe

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/codelupe /usr/local/bin/codelupe
COPY topology.yaml /etc/codelupe/topology.yaml
COPY schemas /etc/codelupe/schemas
WORKDIR /etc/codelupe
ENTRYPOINT ["codelupe"]
