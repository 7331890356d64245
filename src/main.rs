//! `tokenscope`: see what NVIDIA's Cosmos tokenizers do to images and videos.

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match tokenscope::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the outermost context and its causes.
            let causes: Vec<String> = error.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}
