//! `chatfeed`: the command-line client. Exit status: 0 success, 1 the request failed (one line on
//! stderr says why), 2 bad usage.

use chatfeed_client::{app, cli::Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::parse_checked(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Two workers: the interactive timeline streams while posts are sent and the line editor
    // prints through its own thread.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatfeed: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(app::run(cli));
    // Do not wait for the interactive line reader blocked on the terminal.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatfeed: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
