//! The `etlq` binary: the command line (`cli/`), signals and exit codes. The only place that
//! uses `anyhow`; the library reports typed errors.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The isolated extract child (etl/child.rs) runs before any runtime or logging exists:
    // it is a plain, single-purpose process under memory and time limits.
    if std::env::args().nth(1).as_deref() == Some(etlq::etl::child::SUBCOMMAND) {
        return ExitCode::from(etlq::etl::child::main() as u8);
    }
    cli::main()
}
