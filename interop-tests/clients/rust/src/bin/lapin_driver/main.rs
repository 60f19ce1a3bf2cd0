//! lapin (the tokio flavour, as Warren's own tests use it) running scenarios.json against
//! `AMQP_URL`: one JSON line per scenario on stdout. Every name it declares starts with
//! `lapin.`. See `client_drivers` for the command line and the line format.

mod client;
mod cross;
mod scenarios;
mod values;

use std::process::ExitCode;

pub const CLIENT: &str = "lapin";

client_drivers::driver!(Lapin, CLIENT);

fn main() -> ExitCode {
    client_drivers::main::<Lapin>()
}
