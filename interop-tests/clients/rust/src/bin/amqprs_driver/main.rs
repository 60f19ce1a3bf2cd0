//! amqprs (no TLS, no URI parser) running scenarios.json against `AMQP_URL`: one JSON line
//! per scenario on stdout. Every name it declares starts with `amqprs.`. See
//! `client_drivers` for the command line and the line format.

mod client;
mod cross;
mod scenarios;
mod values;

use std::process::ExitCode;

pub const CLIENT: &str = "amqprs";

client_drivers::driver!(Amqprs, CLIENT);

fn main() -> ExitCode {
    client_drivers::main::<Amqprs>()
}
