# portcullis container image. It runs as shipped with examples/container.yaml:
#   docker build -t portcullis .
#   docker run --rm -p 8000:8000 -p 127.0.0.1:9901:9901 \
#     -e JWT_SECRET_KEY=... -e PORTCULLIS_ADMIN_TOKEN=... -e UPSTREAM_URL=http://app:8001 \
#     -v portcullis-data:/var/lib/portcullis portcullis
# To change more than those variables, mount your own config over
# /etc/portcullis/gateway.yaml (listen on 0.0.0.0, keep sqlite_path under
# /var/lib/portcullis, keep an `admin:` section for the HEALTHCHECK).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. Cargo reads every target the
# manifest declares, so each [[bench]] needs a stand-in (tests/shipped_configs.rs checks
# the list against Cargo.toml).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && mkdir -p benches/support && for b in auth blocklist idle load redis; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin portcullis
COPY src ./src
# The release profile keeps line tables for backtraces; the image does not need them.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin portcullis \
    && strip target/release/portcullis
# The revocation store's directory, owned by distroless's nonroot user (65532), so that a
# named volume mounted there starts out writable.
RUN mkdir -p /out/var/lib/portcullis && chown 65532:65532 /out/var/lib/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY --from=build --chown=65532:65532 /out/var/lib/portcullis /var/lib/portcullis
COPY examples/container.yaml /etc/portcullis/gateway.yaml
ENV PORTCULLIS_CONFIG=/etc/portcullis/gateway.yaml
# blocklist.sqlite_path of the default config lives here: revocations survive restarts.
VOLUME /var/lib/portcullis
# Edge and admin listeners of the default config.
EXPOSE 8000 9901
USER nonroot:nonroot
# Distroless has no shell or curl: `portcullis probe` GETs the admin listener's /readyz
# (orchestrators can probe :9901/readyz directly).
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/portcullis", "probe"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run"]
