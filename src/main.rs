//! The `portcullis` command line: argument parsing, logging setup and exit codes.
//! Everything else lives in the library.

mod demo;

use clap::{Parser, Subcommand};
use portcullis::commands::{self, TokenRequest};
use portcullis::config::resolve_path;
use portcullis::revocation::RevokeTarget;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A reverse-proxy auth gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [default: $PORTCULLIS_CONFIG, else gateway.yaml]. Accepted before or
    /// after the subcommand, so `portcullis --config PATH` runs the gateway.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format: text (default) or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Run the gateway with a small echo app standing in for the first upstream.
    Demo,
    /// GET the admin listener's /readyz (or --url); exit 0 on 2xx. For health checks.
    Probe {
        /// URL to probe instead of http://<admin.listen>/readyz.
        #[arg(long)]
        url: Option<String>,
    },
    /// Validate the config and print a summary, or every error.
    Check,
    /// Print a token signed with the configured key.
    Token {
        /// Subject (`sub`).
        #[arg(long)]
        sub: String,
        /// access or refresh.
        #[arg(long = "type", default_value = "access", value_parser = ["access", "refresh"])]
        token_type: String,
        /// Lifetime, e.g. 15m.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Mark the token fresh.
        #[arg(long)]
        fresh: bool,
        /// Extra claim, key=value (value parsed as JSON when it can be).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Sign as this provider (its key, `iss` and `aud`); default: the `jwt` section.
        #[arg(long, default_value = "default")]
        provider: String,
    },
    /// Write a revocation into the configured store.
    Revoke {
        /// Revoke this token (by its jti, or its digest when it has none).
        #[arg(long, conflicts_with_all = ["jti", "sub", "file"])]
        token: Option<String>,
        /// Revoke by jti (needs --exp).
        #[arg(long, requires = "exp", conflicts_with_all = ["sub", "file"])]
        jti: Option<String>,
        /// Expiry (unix seconds) of the token revoked by --jti.
        #[arg(long)]
        exp: Option<u64>,
        /// Revoke every token of this subject issued up to now.
        #[arg(long, conflicts_with = "file")]
        sub: Option<String>,
        /// Revoke every admin-API revocation object in this NDJSON file (`-`: stdin),
        /// all or nothing.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Revoke at this provider (`providers:` name); default: the `jwt` section. NDJSON
        /// lines name theirs with `"provider"`.
        #[arg(long, default_value = "default", conflicts_with = "file")]
        provider: String,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        );
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// One worker per CPU this process may run on (its affinity mask, so `taskset` and
/// container CPU sets count). With a single CPU the current-thread scheduler does the
/// same work without cross-thread wake-ups and work-stealing bookkeeping.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let config = resolve_path(cli.config);
    match command {
        Command::Run => {
            let json_logs = cli.log_format == "json";
            init_logging(json_logs);
            let path = config;
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(portcullis::server::run(path, json_logs)) {
                Ok(()) => ExitCode::SUCCESS,
                // Printed once: as a JSON log line for log collectors, else as text.
                Err(e) if json_logs => {
                    tracing::error!(error = %e, "cannot start");
                    ExitCode::from(1)
                }
                Err(e) => fail(e),
            }
        }
        Command::Demo => {
            init_logging(cli.log_format == "json");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(demo::run(config, cli.log_format == "json")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Probe { url } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(commands::probe(&config, url)) {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Check => match commands::check(&config) {
            Ok(report) => {
                for warning in &report.warnings {
                    eprintln!("warning: {warning}");
                }
                print!("{}", report.summary);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Token {
            sub,
            token_type,
            ttl,
            fresh,
            claims,
            provider,
        } => {
            let request = TokenRequest {
                sub,
                refresh: token_type == "refresh",
                ttl,
                fresh,
                claims,
            };
            match commands::token_for(&config, &request, &provider) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Revoke {
            token,
            jti,
            exp,
            sub,
            file,
            provider,
        } => {
            if let Some(file) = file {
                init_logging(cli.log_format == "json");
                let rt = match runtime() {
                    Ok(rt) => rt,
                    Err(e) => return fail(e),
                };
                return match rt.block_on(commands::revoke_file(&config, &file)) {
                    Ok(message) => {
                        println!("{message}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                };
            }
            let target = match (token, jti, exp, sub) {
                (Some(t), None, _, None) => RevokeTarget::Token(t),
                (None, Some(jti), Some(exp), None) => RevokeTarget::Jti { jti, exp },
                (None, None, _, Some(sub)) => RevokeTarget::Subject(sub),
                _ => {
                    eprintln!(
                        "error: give one of --token T, --jti J --exp UNIX, --sub S, or --file F.ndjson"
                    );
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_format == "json");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(commands::revoke_at(&config, target, &provider)) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
