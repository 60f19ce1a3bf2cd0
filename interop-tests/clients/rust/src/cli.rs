//! The command line every driver in the matrix takes (run.sh passes the same to all):
//! `--mode scenarios|cross-publish|cross-consume`, `--peers a,b,c` (consumers when
//! publishing, publishers when consuming) and `--only id,id` (scenario ids to run).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Scenarios,
    CrossPublish,
    CrossConsume,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    pub peers: Vec<String>,
    /// Empty: every scenario.
    pub only: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ArgsError(String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (usage: --mode scenarios|cross-publish|cross-consume [--peers a,b] [--only id,id])",
            self.0
        )
    }
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ArgsError> {
        let mut out = Args {
            mode: Mode::Scenarios,
            peers: Vec::new(),
            only: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            // Both `--flag value` and `--flag=value`.
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (flag, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ArgsError(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--mode" => {
                    out.mode = match value()?.as_str() {
                        "scenarios" => Mode::Scenarios,
                        "cross-publish" => Mode::CrossPublish,
                        "cross-consume" => Mode::CrossConsume,
                        other => return Err(ArgsError(format!("unknown mode {other:?}"))),
                    }
                }
                "--peers" => out.peers = list(&value()?),
                "--only" => out.only = list(&value()?),
                other => return Err(ArgsError(format!("unknown argument {other:?}"))),
            }
        }
        Ok(out)
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(s.iter().map(|x| x.to_string()))
    }

    #[test]
    fn defaults_to_every_scenario() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.mode, Mode::Scenarios);
        assert!(a.peers.is_empty() && a.only.is_empty());
    }

    #[test]
    fn reads_what_run_sh_passes() {
        let a = parse(&["--mode", "cross-consume", "--peers", "pika,,lapin"]).unwrap();
        assert_eq!(a.mode, Mode::CrossConsume);
        assert_eq!(a.peers, ["pika", "lapin"]);
        let a = parse(&["--only=get,connect"]).unwrap();
        assert_eq!(a.only, ["get", "connect"]);
    }

    #[test]
    fn refuses_unknown_flags_and_modes() {
        assert!(parse(&["--mode", "fast"]).is_err());
        assert!(parse(&["--verbose"]).is_err());
        assert!(parse(&["--peers"]).is_err());
    }
}
