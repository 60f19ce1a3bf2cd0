//! What the Rust client drivers share: the scenario list (`scenarios.json`), the command line
//! every driver takes (`--mode`, `--peers`, `--only`), the JSON-line report, the runner that
//! bounds each scenario by its timeout, and the client-neutral checks of a received message
//! (the canonical message, `x-death`). Each client is one binary under `src/bin/`: it turns
//! its library's values into JSON and back, and implements [`Driver`].
//!
//! A scenario turns into one line:
//!   * it returns a short detail string: pass;
//!   * it returns [`Outcome::Skip`]: skip (the client cannot do that step; never a pass);
//!   * it returns [`Outcome::Fail`], panics or runs past its timeout: fail, with the reason.

pub mod amqp_url;
pub mod check;
pub mod cli;
pub mod outcome;
pub mod spec;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use outcome::{Outcome, Step};
pub use spec::{Params, Spec};

/// A scenario (or cross-client step) ready to run: owns everything it needs.
pub type StepFuture = Pin<Box<dyn Future<Output = Step<String>> + Send + 'static>>;

/// What a driver binary runs against: the scenario list and the broker's URL.
pub struct Ctx {
    pub spec: Spec,
    /// `AMQP_URL`, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
}

/// One client library's steps. The runner calls each for the mode it was started in.
pub trait Driver {
    /// The client's name: the `client` field of every line, and the first part (before a dot)
    /// of every queue and exchange it declares, so drivers can share one broker.
    const CLIENT: &'static str;

    /// The scenario `id` with its parameters, or `None` if this driver has no step for it
    /// (reported as a skip).
    fn scenario(ctx: Arc<Ctx>, id: &str, params: Params) -> Option<StepFuture>;

    /// Publishes the canonical message to the cross-client queue of each consumer.
    fn cross_publish(ctx: Arc<Ctx>, consumers: Vec<String>) -> StepFuture;

    /// Reads the canonical message `publisher` left for this client and compares it.
    fn cross_consume(ctx: Arc<Ctx>, publisher: String) -> StepFuture;
}

/// The whole of a driver's `main`: reads the command line, `SCENARIOS_JSON` and `AMQP_URL`,
/// runs what the mode asks for and prints one JSON line per result. Exits 2 only when it
/// cannot start (bad arguments, unreadable scenario list); results are never exit codes.
pub fn main<D: Driver>() -> ExitCode {
    let args = match cli::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", D::CLIENT);
            return ExitCode::from(2);
        }
    };
    let spec = match Spec::load(&spec::default_path()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", D::CLIENT);
            return ExitCode::from(2);
        }
    };
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: tokio runtime: {e}", D::CLIENT);
            return ExitCode::from(2);
        }
    };
    let ctx = Arc::new(Ctx { spec, url });
    runtime.block_on(run_mode::<D>(ctx, args));
    // Connections a timed-out scenario left behind must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::SUCCESS
}

async fn run_mode<D: Driver>(ctx: Arc<Ctx>, args: cli::Args) {
    let cross_timeout = ctx.spec.cross_timeout;
    match args.mode {
        cli::Mode::CrossPublish => {
            let step = D::cross_publish(ctx.clone(), args.peers);
            outcome::run(D::CLIENT, "cross_publish", cross_timeout, None, step).await;
        }
        cli::Mode::CrossConsume => {
            for publisher in args.peers {
                let step = D::cross_consume(ctx.clone(), publisher.clone());
                let extra = Some(("publisher", publisher.as_str()));
                outcome::run(D::CLIENT, "cross", cross_timeout, extra, step).await;
            }
        }
        cli::Mode::Scenarios => {
            for sc in &ctx.spec.scenarios {
                if !args.only.is_empty() && !args.only.contains(&sc.id) {
                    continue;
                }
                let params = Params::new(&sc.id, sc.params.clone());
                match D::scenario(ctx.clone(), &sc.id, params) {
                    Some(step) => outcome::run(D::CLIENT, &sc.id, sc.timeout, None, step).await,
                    None => outcome::emit(
                        D::CLIENT,
                        &sc.id,
                        "skip",
                        &format!("no {} step for this scenario yet", D::CLIENT),
                        None,
                    ),
                }
            }
        }
    }
}

/// A driver binary's [`Driver`]: `driver!(Lapin, "lapin")` defines the type `Lapin` whose
/// steps are the binary's `scenarios` module (one function per scenarios.json id, named after
/// it) and its `cross` module (`publish_to`, `consume_from`).
#[macro_export]
macro_rules! driver {
    ($ty:ident, $client:expr) => {
        struct $ty;

        impl $crate::Driver for $ty {
            const CLIENT: &'static str = $client;

            fn scenario(
                ctx: std::sync::Arc<$crate::Ctx>,
                id: &str,
                p: $crate::Params,
            ) -> Option<$crate::StepFuture> {
                use scenarios as s;
                let step: $crate::StepFuture = match id {
                    "connect" => Box::pin(s::connect(ctx, p)),
                    "declare_topology" => Box::pin(s::declare_topology(ctx, p)),
                    "publish_properties" => Box::pin(s::publish_properties(ctx, p)),
                    "consume_ack_prefetch" => Box::pin(s::consume_ack_prefetch(ctx, p)),
                    "get" => Box::pin(s::get(ctx, p)),
                    "nack_requeue" => Box::pin(s::nack_requeue(ctx, p)),
                    "reject_dlx" => Box::pin(s::reject_dlx(ctx, p)),
                    "delivery_limit_dlq" => Box::pin(s::delivery_limit_dlq(ctx, p)),
                    "publisher_confirms" => Box::pin(s::publisher_confirms(ctx, p)),
                    "mandatory_return" => Box::pin(s::mandatory_return(ctx, p)),
                    "server_cancel" => Box::pin(s::server_cancel(ctx, p)),
                    "empty_body" => Box::pin(s::empty_body(ctx, p)),
                    "large_body" => Box::pin(s::large_body(ctx, p)),
                    "heartbeat_idle" => Box::pin(s::heartbeat_idle(ctx, p)),
                    "clean_close" => Box::pin(s::clean_close(ctx, p)),
                    _ => return None,
                };
                Some(step)
            }

            fn cross_publish(
                ctx: std::sync::Arc<$crate::Ctx>,
                consumers: Vec<String>,
            ) -> $crate::StepFuture {
                Box::pin(cross::publish_to(ctx, consumers))
            }

            fn cross_consume(
                ctx: std::sync::Arc<$crate::Ctx>,
                publisher: String,
            ) -> $crate::StepFuture {
                Box::pin(cross::consume_from(ctx, publisher))
            }
        }
    };
}

/// `{client}.{what}`: every name a driver declares.
pub fn name(client: &str, what: &str) -> String {
    format!("{client}.{what}")
}
