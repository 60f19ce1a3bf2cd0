//! Interop tests: Warren driven through the protocol by the real lapin client and by raw
//! sockets, asserting RabbitMQ's behaviour. The tests live in `tests/`, one file per area:
//! `connection`, `exchanges`, `queues`, `basic`, `confirms`, `tx`, `properties`,
//! `flow_control`, `bad_input`. `tests/common/` starts a broker on an ephemeral port with a
//! temporary data directory, connects lapin to it, and has a raw-frame client (`raw.rs`).
//!
//! Run one area with `cargo test -p interop-tests --test basic`.
