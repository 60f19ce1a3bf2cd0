//! Results and their JSON lines. A scenario is a future returning [`Step`]; [`run`] spawns it
//! as its own task, bounds it by the scenario's timeout and prints exactly one line, whatever
//! happens inside (an error, a panic in the driver or the client library, a hang), so one bad
//! scenario never takes the rest down with it.
//!
//! The line is the one every driver in the matrix prints:
//! `{"client": ..., "scenario": ..., "status": "pass"|"fail"|"skip", "detail": ...}`, plus
//! `"publisher"` for a cross-client read.

use std::any::Any;
use std::time::Duration;

use serde_json::{Map, Value};

/// Why a scenario did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker (or the client talking to it) did not behave as the scenario expects.
    Fail(String),
    /// The client library cannot do this step; the text says why. Never counted as a pass.
    Skip(String),
}

/// Any error a client library returns is a failure carrying its text. `Outcome` itself is no
/// `std::error::Error`, which keeps this from overlapping `From<Outcome> for Outcome`.
impl<E: std::error::Error> From<E> for Outcome {
    fn from(e: E) -> Self {
        Outcome::Fail(e.to_string())
    }
}

pub type Step<T> = Result<T, Outcome>;

/// `return Err(Outcome::Fail(format!(...)))`
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::Outcome::Fail(format!($($arg)*)))
    };
}

/// `return Err(Outcome::Skip(format!(...)))`
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err($crate::Outcome::Skip(format!($($arg)*)))
    };
}

/// Prints one result line (stdout is line-buffered, so each line is out at once).
pub fn emit(client: &str, scenario: &str, status: &str, detail: &str, extra: Option<(&str, &str)>) {
    let mut line = Map::new();
    line.insert("client".into(), client.into());
    line.insert("scenario".into(), scenario.into());
    line.insert("status".into(), status.into());
    line.insert("detail".into(), detail.into());
    if let Some((k, v)) = extra {
        line.insert(k.into(), v.into());
    }
    println!("{}", Value::Object(line));
}

/// Runs one step to its line. The step runs on its own task: a panic becomes a failure with
/// the panic's message, and a step past `timeout` is aborted (dropping, and so closing, its
/// connections) and fails with "scenario timed out".
pub async fn run<F>(
    client: &str,
    scenario: &str,
    timeout: Duration,
    extra: Option<(&str, &str)>,
    step: F,
) where
    F: std::future::Future<Output = Step<String>> + Send + 'static,
{
    let task = tokio::spawn(step);
    let abort = task.abort_handle();
    let (status, detail) = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(detail))) => ("pass", detail),
        Ok(Ok(Err(Outcome::Fail(why)))) => ("fail", why),
        Ok(Ok(Err(Outcome::Skip(why)))) => ("skip", why),
        Ok(Err(join)) if join.is_panic() => ("fail", format!("panic: {}", panic_text(join))),
        Ok(Err(join)) => ("fail", join.to_string()),
        Err(_) => {
            abort.abort();
            ("fail", "scenario timed out".to_owned())
        }
    };
    emit(client, scenario, status, &detail, extra);
}

fn panic_text(join: tokio::task::JoinError) -> String {
    let payload: Box<dyn Any + Send> = join.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
