//! The `flowcast` binary: parse the command line, run the command, exit with
//! its code. Everything else lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = flowcast::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    std::process::ExitCode::from(runtime.block_on(flowcast::app::main(cli)))
}
