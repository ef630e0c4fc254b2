use std::process::ExitCode;

fn main() -> ExitCode {
    keyservice::cli::main()
}
