//! The job file `/memrace/job` (docs/control-protocol.md, "The job file").
//!
//! One `<key> <percent-escaped value>` per line; `param <name> <value>` has two fields.
//! Blank lines and lines starting with `#` are ignored, and so are trailing fields
//! starting with `#` (comments; escaped values never contain spaces). Anything else that is
//! not understood is an error: a typo must not silently change what a run measures.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use control_proto::unescape;

use crate::error::Res;

/// What the harness was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run this argv (`arg` lines) and forward its output.
    Command(Vec<OsString>),
    /// Run `trials` trials of the named workload.
    Workload { name: String, trials: u32 },
    /// Run the benchmarks the parameters name (`memrace perf`).
    Perf,
}

/// A parsed job file.
#[derive(Debug, PartialEq, Eq)]
pub struct Job {
    pub mode: Mode,
    pub params: Params,
}

/// `param` lines. Consumers take the parameters they know; [`Params::finish`] then rejects
/// whatever is left, so a misspelt parameter is an error instead of a silent default.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Remove and return the raw value of `name`, if given.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    /// A non-negative integer parameter (decimal, or hex with `0x`).
    pub fn take_u64(&mut self, name: &str, default: u64) -> Res<u64> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => {
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.map_err(|_| format!("param {name}: not a number: {v:?}"))
            }
        }
    }

    /// A CPU number.
    pub fn take_cpu(&mut self, name: &str, default: usize) -> Res<usize> {
        Ok(self.take_u64(name, default as u64)? as usize)
    }

    /// A `0`/`1` flag.
    pub fn take_bool(&mut self, name: &str, default: bool) -> Res<bool> {
        match self.take(name).as_deref() {
            None => Ok(default),
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            Some(v) => Err(format!("param {name}: want 0 or 1, got {v:?}")),
        }
    }

    /// One of a fixed set of words.
    pub fn take_choice(&mut self, name: &str, choices: &[&'static str]) -> Res<&'static str> {
        match self.take(name) {
            None => Ok(choices[0]),
            Some(v) => choices
                .iter()
                .find(|c| **c == v)
                .copied()
                .ok_or_else(|| format!("param {name}: want one of {choices:?}, got {v:?}")),
        }
    }

    /// Error if any parameter was not consumed.
    pub fn finish(self) -> Res<()> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("unknown param {k:?}")),
        }
    }
}

fn value(token: &str, lineno: usize) -> Res<Vec<u8>> {
    unescape(token).map_err(|e| format!("job line {lineno}: {e}"))
}

fn text(token: &str, lineno: usize) -> Res<String> {
    String::from_utf8(value(token, lineno)?)
        .map_err(|_| format!("job line {lineno}: value is not UTF-8"))
}

/// Parse the job file text.
pub fn parse(input: &str) -> Res<Job> {
    let mut mode: Option<String> = None;
    let mut args = Vec::new();
    let mut workload: Option<String> = None;
    let mut trials: Option<u32> = None;
    let mut params = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let lineno = i + 1;
        let mut fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if let Some(c) = fields.iter().position(|f| f.starts_with('#')) {
            fields.truncate(c);
        }
        let Some((&key, rest)) = fields.split_first() else {
            continue;
        };
        let want = if key == "param" { 2 } else { 1 };
        if rest.len() != want {
            return Err(format!(
                "job line {lineno}: {key} takes {want} value(s), got {}",
                rest.len()
            ));
        }
        let once = |slot: bool| {
            if slot {
                Err(format!("job line {lineno}: duplicate {key}"))
            } else {
                Ok(())
            }
        };
        match key {
            "mode" => {
                once(mode.is_some())?;
                mode = Some(text(rest[0], lineno)?);
            }
            "arg" => args.push(OsString::from_vec(value(rest[0], lineno)?)),
            "workload" => {
                once(workload.is_some())?;
                workload = Some(text(rest[0], lineno)?);
            }
            "trials" => {
                once(trials.is_some())?;
                let t = text(rest[0], lineno)?;
                trials = Some(
                    t.parse()
                        .map_err(|_| format!("job line {lineno}: bad trials {t:?}"))?,
                );
            }
            "param" => {
                let name = text(rest[0], lineno)?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!("job line {lineno}: bad param name {name:?}"));
                }
                if params.iter().any(|(k, _)| *k == name) {
                    return Err(format!("job line {lineno}: duplicate param {name}"));
                }
                params.push((name, text(rest[1], lineno)?));
            }
            other => return Err(format!("job line {lineno}: unknown key {other:?}")),
        }
    }
    let mode = match mode.as_deref() {
        Some("command") => {
            if args.is_empty() {
                return Err("mode command needs at least one arg line".into());
            }
            if workload.is_some() || trials.is_some() {
                return Err("mode command takes no workload/trials lines".into());
            }
            Mode::Command(args)
        }
        Some("workload") => {
            if !args.is_empty() {
                return Err("mode workload takes no arg lines".into());
            }
            let name = workload.ok_or("mode workload needs a workload line")?;
            Mode::Workload {
                name,
                trials: trials.unwrap_or(1),
            }
        }
        Some("perf") => {
            if !args.is_empty() || workload.is_some() || trials.is_some() {
                return Err("mode perf takes only param lines".into());
            }
            Mode::Perf
        }
        Some(other) => return Err(format!("unknown mode {other:?}")),
        None => return Err("job file has no mode line".into()),
    };
    Ok(Job {
        mode,
        params: Params(params),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command_example() {
        let job = parse(
            "mode command            # or: mode workload\narg /bin/sh\narg -c\narg exit%207\n",
        )
        .unwrap();
        assert_eq!(
            job.mode,
            Mode::Command(vec!["/bin/sh".into(), "-c".into(), "exit 7".into()])
        );
        assert_eq!(job.params, Params::default());
    }

    #[test]
    fn parses_a_workload_with_params() {
        let text = "# a job\n\nmode workload\nworkload madv-free-dio  # name\ntrials 20\nparam pages 1\nparam io aio\n";
        let mut job = parse(text).unwrap();
        assert_eq!(
            job.mode,
            Mode::Workload {
                name: "madv-free-dio".into(),
                trials: 20
            }
        );
        assert_eq!(job.params.take_u64("pages", 9), Ok(1));
        assert_eq!(job.params.take_choice("io", &["sync", "aio"]), Ok("aio"));
        assert_eq!(job.params.take_bool("gated", true), Ok(true));
        job.params.finish().unwrap();
    }

    #[test]
    fn empty_and_binary_args_survive_escaping() {
        let job = parse("mode command\narg echo\narg %\narg a%00%FFb\n").unwrap();
        let Mode::Command(argv) = job.mode else {
            panic!()
        };
        assert_eq!(argv[1], OsString::new());
        assert_eq!(argv[2], OsString::from_vec(b"a\0\xffb".to_vec()));
    }

    #[test]
    fn rejects_mistakes() {
        for bad in [
            "",
            "mode command\n",
            "mode command\narg x\nfoo bar\n",
            "mode command\narg x y\n",
            "mode dance\n",
            "mode workload\n",
            "mode workload\nworkload w\narg x\n",
            "mode workload\nworkload w\ntrials -1\n",
            "mode workload\nworkload w\nparam gated\n",
            "mode workload\nworkload w\nparam a 1\nparam a 2\n",
            "mode workload\nworkload w\nparam a;b 1\n",
            "mode workload\nmode command\n",
            "mode command\narg %4\n",
            "mode perf\ntrials 3\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params_reject_leftovers_and_bad_values() {
        let mut p = Params::from_pairs(&[("pages", "0x10"), ("typo", "1"), ("gated", "2")]);
        assert_eq!(p.take_u64("pages", 1), Ok(16));
        assert!(p.take_bool("gated", true).is_err());
        assert!(p.take_choice("io", &["sync", "aio"]) == Ok("sync"));
        assert!(p.finish().is_err());
    }
}
