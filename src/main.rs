//! The `edgellm` binary: parse arguments, run the command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
mod cli;

use cli::{Cli, Command};
use edgellm_engine::Engine;
use edgellm_server::exit_code;

fn main() -> ExitCode {
    edgellm_server::budget::tune_allocator();
    // With panic = "abort" in shipped builds nothing unwinds: log the panic before the abort,
    // so the journal says where it happened.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default_hook(info);
    }));
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => exit_code::OK,
        Err((code, err)) => {
            eprintln!("edgellm: {err:#}");
            code
        }
    };
    ExitCode::from(code as u8)
}

type Failure = (i32, anyhow::Error);

fn bad_config(e: impl Into<anyhow::Error>) -> Failure {
    (exit_code::BAD_CONFIG, e.into())
}
fn model_load(e: impl Into<anyhow::Error>) -> Failure {
    (exit_code::MODEL_LOAD, e.into())
}
fn runtime_err(e: impl Into<anyhow::Error>) -> Failure {
    (exit_code::RUNTIME, e.into())
}

/// A small runtime: the transports are light, inference has its own thread.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edgellm-io")
        .enable_all()
        .build()
        .map_err(runtime_err)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Generate { prompt, config, model_dir, max_tokens, temperature, seed, stats } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            // The terminal gets the answer only, unless RUST_LOG asks for the engine's log
            // (tools/arm.sh reads the load phases from it).
            if std::env::var_os("RUST_LOG").is_some() {
                cli::init_logging(&config.logging.level);
            }
            let mut engine = Engine::load(config.engine_options(model_dir.as_deref())).map_err(model_load)?;
            cli::generate(&config, &mut engine, &prompt, max_tokens, temperature, seed, stats).map_err(runtime_err)
        }
        Command::Bench { config, model_dir, threads, decode_tokens, json, profile } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let report =
                cli::bench(&config, model_dir.as_deref(), &threads, decode_tokens, profile).map_err(model_load)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(runtime_err)?);
            } else {
                cli::print_bench_table(&report);
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            config.check_model_files().map_err(bad_config)?;
            config.check_service_files().map_err(bad_config)?;
            for problem in config.check_optional_files() {
                eprintln!("edgellm: warning: {problem} (the daemon would run degraded without it)");
            }
            print!("{}", config.to_display_toml());
            println!();
            print!("{}", cli::MemoryBudget::estimate(&config).render());
            Ok(())
        }
        Command::Serve { config: path } => {
            let config = cli::load_config(path.as_deref()).map_err(bad_config)?;
            config.check_service_files().map_err(bad_config)?;
            cli::init_logging(&config.logging.level);
            let runtime = runtime()?;
            runtime
                .block_on(edgellm_server::daemon::run(config, path, cli::shutdown_signal()))
                .map_err(|e| (e.exit_code(), e.into()))
        }
        Command::Ask { prompt, socket, config, session, max_tokens, temperature, seed, json } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let socket = socket.unwrap_or(config.socket.path);
            let mut request = serde_json::json!({"prompt": prompt, "stream": !json});
            for (key, value) in [
                ("session", session.map(serde_json::Value::from)),
                ("max_tokens", max_tokens.map(serde_json::Value::from)),
                ("temperature", temperature.map(serde_json::Value::from)),
                ("seed", seed.map(serde_json::Value::from)),
            ] {
                if let Some(v) = value {
                    request[key] = v;
                }
            }
            let last = runtime()?.block_on(cli::ask(&socket, request, !json)).map_err(runtime_err)?;
            if json {
                println!("{last}");
            } else {
                println!();
            }
            match last["event"].as_str() {
                Some("done") => Ok(()),
                _ => Err(runtime_err(cli::daemon_error(&last))),
            }
        }
        Command::Scan { file, config } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let stdout = std::io::stdout().lock();
            match file {
                Some(path) => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| runtime_err(anyhow::anyhow!("{}: {e}", path.display())))?;
                    cli::scan(&config, std::io::BufReader::new(f), stdout)
                }
                None => cli::scan(&config, std::io::stdin().lock(), stdout),
            }
            .map_err(runtime_err)
        }
        Command::Health { socket, config } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let socket = socket.unwrap_or(config.socket.path);
            let event = runtime()?
                .block_on(cli::ask(&socket, serde_json::json!({"op": "health"}), false))
                .map_err(runtime_err)?;
            if event["event"] != "health" {
                return Err(runtime_err(cli::daemon_error(&event)));
            }
            println!("{}", serde_json::to_string_pretty(&event["health"]).map_err(runtime_err)?);
            Ok(())
        }
    }
}
