//! The `warren` binary: parse settings, set up logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use warren_broker::Config;

// Messages are allocated by the publisher's connection task and freed by the consumer's, on
// another thread: glibc's malloc spent ~8% of the broker's CPU on that (arena locks and
// cross-thread frees), mimalloc's free lists handle it without locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("warren: invalid --log filter {:?}: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("warren: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let broker = match warren_broker::start(config).await {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("warren: {error}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(return_freed_memory());
    wait_for_signal().await;
    tracing::info!("signal received, shutting down");
    broker.shutdown().await;
    ExitCode::SUCCESS
}

/// mimalloc hands freed memory back to the OS only after a delay, and only when some later
/// allocation or collection on the owning thread gets round to it: after a burst (a fanout
/// run that left 4M messages, deleted with their queues) an idle broker kept 150-900 MiB it
/// no longer used, and a 1M backlog filled next measured 145-921 MiB instead of ~40. A forced
/// collection once a second releases it (41-44 MiB; no-ack CPU per message unchanged). A
/// purge delay of 0 or unforced collections on parking workers left 100-300 MiB behind.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: mi_collect only walks mimalloc's own structures.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
