//! The `propel` binary: parse the command line, run, map errors to exit codes.

use clap::Parser;
use propel::cli::{Cli, LogFormat, execute};

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROPEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Err(err) = execute(cli) {
        let text = err.to_string();
        eprintln!("error: {text}");
        std::process::exit(err.exit_code());
    }
}
