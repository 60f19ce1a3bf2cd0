//! `scenarios.json`, read once: the canonical message, each scenario's id, timeout and
//! parameters, and the cross-client queue pattern. Parameters stay JSON; [`Params`] reads them
//! and turns a missing or mistyped one into a failed scenario, not a panic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::outcome::{Outcome, Step};

/// The scenario list, as the drivers use it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub canonical: Canonical,
    pub scenarios: Vec<Scenario>,
    /// `{publisher}.cross.to.{consumer}`
    pub cross_queue: String,
    pub cross_timeout: Duration,
}

/// The message every client publishes and every client compares field by field.
#[derive(Debug, Clone)]
pub struct Canonical {
    pub body: String,
    /// Keyed as in scenarios.json (`content_type`, `delivery_mode`, ...).
    pub properties: Map<String, Value>,
    pub headers: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub id: String,
    pub timeout: Duration,
    pub params: Value,
}

#[derive(Debug)]
pub struct SpecError(String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenarios.json: {}", self.0)
    }
}

impl std::error::Error for SpecError {}

/// `SCENARIOS_JSON` if set (run.sh sets it), else the file beside this crate's folder.
pub fn default_path() -> PathBuf {
    match std::env::var_os("SCENARIOS_JSON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios.json"),
    }
}

impl Spec {
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let root: Value = serde_json::from_str(text).map_err(|e| SpecError(e.to_string()))?;
        let canon = &root["canonical_message"];
        let canonical = Canonical {
            body: str_at(canon, "body")?,
            properties: object_at(canon, "properties")?,
            headers: object_at(canon, "headers")?,
        };
        let scenarios = root["scenarios"]
            .as_array()
            .ok_or_else(|| SpecError("no scenarios array".into()))?
            .iter()
            .map(|s| {
                Ok(Scenario {
                    id: str_at(s, "id")?,
                    timeout: seconds_at(s, "timeout_s")?,
                    params: s.get("params").cloned().unwrap_or(Value::Null),
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        let cross = &root["cross_client"];
        Ok(Spec {
            canonical,
            scenarios,
            cross_queue: str_at(cross, "queue")?,
            cross_timeout: seconds_at(cross, "timeout_s")?,
        })
    }

    /// The queue `publisher` fills for `consumer` in the cross-client matrix.
    pub fn cross_queue(&self, publisher: &str, consumer: &str) -> String {
        self.cross_queue
            .replace("{publisher}", publisher)
            .replace("{consumer}", consumer)
    }
}

fn str_at(v: &Value, key: &str) -> Result<String, SpecError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SpecError(format!("{key} missing or not a string")))
}

fn object_at(v: &Value, key: &str) -> Result<Map<String, Value>, SpecError> {
    v.get(key)
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| SpecError(format!("{key} missing or not an object")))
}

fn seconds_at(v: &Value, key: &str) -> Result<Duration, SpecError> {
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| SpecError(format!("{key} missing or not a positive number")))
}

/// One scenario's `params`.
#[derive(Debug, Clone)]
pub struct Params {
    scenario: String,
    value: Value,
}

impl Params {
    pub fn new(scenario: &str, value: Value) -> Self {
        Params {
            scenario: scenario.to_owned(),
            value,
        }
    }

    fn missing(&self, key: &str, what: &str) -> Outcome {
        Outcome::Fail(format!(
            "scenarios.json: {}.params.{key} missing or not {what}",
            self.scenario
        ))
    }

    pub fn value(&self, key: &str) -> Step<&Value> {
        self.value
            .get(key)
            .ok_or_else(|| self.missing(key, "present"))
    }

    pub fn str(&self, key: &str) -> Step<&str> {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn u64(&self, key: &str) -> Step<u64> {
        self.value
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    /// A count or size that fits in memory (`usize`).
    pub fn usize(&self, key: &str) -> Step<usize> {
        usize::try_from(self.u64(key)?).map_err(|_| self.missing(key, "a usize"))
    }

    pub fn object(&self, key: &str) -> Step<&Map<String, Value>> {
        self.value
            .get(key)
            .and_then(Value::as_object)
            .ok_or_else(|| self.missing(key, "an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_scenario_list() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios.json"))
            .expect("scenarios.json loads");
        assert!(spec.scenarios.iter().any(|s| s.id == "connect"));
        assert_eq!(spec.canonical.properties["user_id"], "guest");
        assert_eq!(spec.cross_queue("a", "b"), "a.cross.to.b");
    }

    #[test]
    fn a_missing_parameter_is_a_failure_naming_it() {
        let p = Params::new("get", serde_json::json!({"n": 1}));
        assert_eq!(p.u64("n").ok(), Some(1));
        match p.str("n") {
            Err(Outcome::Fail(m)) => assert!(m.contains("get.params.n"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
