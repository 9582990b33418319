//! The `edgellm` binary: parse arguments, run the command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use edgellm::cli::{self, Cli, Command};
use edgellm::engine::Engine;
use edgellm::exit_code;

fn main() -> ExitCode {
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
fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    (exit_code::RUNTIME, e.into())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Generate { prompt, config, model_dir, max_tokens, temperature, seed, stats } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let mut engine = Engine::load(cli::engine_options(&config, model_dir.as_deref())).map_err(model_load)?;
            cli::generate(&config, &mut engine, &prompt, max_tokens, temperature, seed, stats).map_err(runtime)
        }
        Command::Bench { config, model_dir, threads, decode_tokens, json } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            let report = cli::bench(&config, model_dir.as_deref(), &threads, decode_tokens).map_err(model_load)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(runtime)?);
            } else {
                cli::print_bench_table(&report);
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = cli::load_config(config.as_deref()).map_err(bad_config)?;
            print!("{}", config.to_display_toml());
            Ok(())
        }
    }
}
