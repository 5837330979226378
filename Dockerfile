# portcullis container image.
#   docker build -t portcullis .
#   docker run --rm -p 8000:8000 -p 127.0.0.1:9901:9901 \
#     -e JWT_SECRET_KEY=... -e PORTCULLIS_ADMIN_TOKEN=... \
#     -v $PWD/gateway.yaml:/etc/portcullis/gateway.yaml:ro \
#     -v portcullis-data:/var/lib/portcullis portcullis
# The mounted gateway.yaml must listen on 0.0.0.0 (not 127.0.0.1) to be reachable, and
# should put its SQLite file under /var/lib/portcullis (a volume) to survive restarts.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && mkdir -p benches/support && for b in auth blocklist load redis; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin portcullis || true
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
ENV PORTCULLIS_CONFIG=/etc/portcullis/gateway.yaml
# Edge and admin listeners (as set in the mounted gateway.yaml).
EXPOSE 8000 9901
USER nonroot:nonroot
# Distroless has no shell or curl: `portcullis probe` GETs the admin listener's /readyz
# (the mounted config needs an `admin:` section; orchestrators can probe :9901 directly).
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/portcullis", "probe"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run"]
