//! The control-channel line protocol between the guest harness and the bench.
//!
//! The guest writes one message per line on a tty of its own: the second serial port
//! (ttyS1) on x86_64, the virtio console hvc0 on arm64.
//! Everything the bench receives here is untrusted: `parse_line` never panics,
//! bounds every field and rejects what it does not understand, so a confused or
//! hostile guest can at worst produce `Err` values. See docs/control-protocol.md.

use std::fmt;

/// Protocol version spoken by this crate; sent in `HELLO`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line the bench accepts, newline excluded. Longer lines are rejected.
pub const MAX_LINE: usize = 4096;
/// Longest name token (gate, phase, fact key).
pub const MAX_NAME: usize = 64;
/// The benchmarks of a perf job (`mode perf`, `param benches`), in the order the harness
/// runs them. The bench checks names against this before it boots anything.
pub const PERF_BENCHES: &[&str] = &[
    "anon-fault-4k",
    "anon-fault-thp",
    "shmem-fault",
    "file-fault",
    "mmap-munmap",
    "mremap-4k",
    "mremap-pmd",
    "fork",
    "madv-dontneed",
    "madv-free-pageout",
    "odirect-read",
    "migrate",
];

/// Which output stream of the guest command an `OUT` line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a workload trial's oracle concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The oracle saw the bug's effect.
    Reproduced,
    /// The oracle saw correct behaviour.
    Intact,
    /// The workload itself failed (a syscall error, a setup problem).
    Error,
}

/// One control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The harness is up and speaks `version`.
    Hello { version: u32 },
    /// Bytes the guest command wrote.
    Output { stream: Stream, data: Vec<u8> },
    /// A workload thread reached milestone `name` on guest CPU `cpu`, as task `tid`.
    Ready { name: String, cpu: u32, tid: u32 },
    /// A mailbox gate: a u32 at guest-physical address `gpa`, opened by writing 1.
    Gate { name: String, gpa: u64 },
    /// Workload progress marker.
    Phase { name: String },
    /// Oracle verdict for one trial, with a free-text detail.
    Result {
        trial: u32,
        outcome: Outcome,
        detail: String,
    },
    /// A measured fact, e.g. `cpus 2`.
    Fact { key: String, value: String },
    /// One timed repetition of benchmark `bench`: `ops` operations in `ns` nanoseconds
    /// of the guest's CLOCK_MONOTONIC (instructions executed, under QEMU's icount).
    Sample {
        bench: String,
        rep: u32,
        ns: u64,
        ops: u64,
    },
    /// The guest command exited with `code`; power-off follows.
    Exit { code: i32 },
}

/// Why a line was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    TooLong(usize),
    Empty,
    UnknownVerb(String),
    WrongFieldCount {
        verb: &'static str,
        expected: usize,
        got: usize,
    },
    BadNumber(String),
    BadName(String),
    BadEscape(String),
    BadKeyword(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLong(n) => write!(f, "line of {n} bytes exceeds {MAX_LINE}"),
            ParseError::Empty => write!(f, "empty line"),
            ParseError::UnknownVerb(v) => write!(f, "unknown verb {v:?}"),
            ParseError::WrongFieldCount {
                verb,
                expected,
                got,
            } => {
                write!(f, "{verb} takes {expected} fields, got {got}")
            }
            ParseError::BadNumber(s) => write!(f, "not a number: {s:?}"),
            ParseError::BadName(s) => write!(f, "not a valid name: {s:?}"),
            ParseError::BadEscape(s) => write!(f, "bad percent-escape in {s:?}"),
            ParseError::BadKeyword(s) => write!(f, "unknown keyword {s:?}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Percent-escape bytes so that the result is one space-free printable token.
/// `%`, space and every byte outside 0x21..=0x7e become `%XX`.
pub fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        // An empty field would vanish between separators: encode it as a lone '%'.
        out.push('%');
    }
    out
}

/// Inverse of [`escape`].
pub fn unescape(token: &str) -> Result<Vec<u8>, ParseError> {
    if token == "%" {
        return Ok(Vec::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ParseError::BadEscape(token.chars().take(32).collect()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn name(token: &str) -> Result<String, ParseError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_NAME
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b));
    if ok {
        Ok(token.to_string())
    } else {
        Err(ParseError::BadName(token.chars().take(MAX_NAME).collect()))
    }
}

fn number<T: std::str::FromStr>(token: &str) -> Result<T, ParseError> {
    token
        .parse()
        .map_err(|_| ParseError::BadNumber(token.chars().take(32).collect()))
}

fn text(token: &str) -> Result<String, ParseError> {
    Ok(String::from_utf8_lossy(&unescape(token)?).into_owned())
}

/// Parse one line (without its trailing newline; a trailing `\r` is tolerated).
pub fn parse_line(line: &[u8]) -> Result<Message, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong(line.len()));
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Non-UTF-8 can only be garbage: every valid field is ASCII.
    let line =
        std::str::from_utf8(line).map_err(|_| ParseError::BadEscape("non-UTF-8 line".into()))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let verb = fields[0];
    if verb.is_empty() {
        return Err(ParseError::Empty);
    }
    let args = &fields[1..];
    let want = |verb: &'static str, n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(ParseError::WrongFieldCount {
                verb,
                expected: n,
                got: args.len(),
            })
        }
    };
    match verb {
        "HELLO" => {
            want("HELLO", 1)?;
            Ok(Message::Hello {
                version: number(args[0])?,
            })
        }
        "OUT" => {
            want("OUT", 2)?;
            let stream = match args[0] {
                "stdout" => Stream::Stdout,
                "stderr" => Stream::Stderr,
                other => return Err(ParseError::BadKeyword(other.chars().take(16).collect())),
            };
            Ok(Message::Output {
                stream,
                data: unescape(args[1])?,
            })
        }
        "READY" => {
            want("READY", 3)?;
            Ok(Message::Ready {
                name: name(args[0])?,
                cpu: number(args[1])?,
                tid: number(args[2])?,
            })
        }
        "GATE" => {
            want("GATE", 2)?;
            let gpa = u64::from_str_radix(args[1].trim_start_matches("0x"), 16)
                .map_err(|_| ParseError::BadNumber(args[1].chars().take(32).collect()))?;
            Ok(Message::Gate {
                name: name(args[0])?,
                gpa,
            })
        }
        "PHASE" => {
            want("PHASE", 1)?;
            Ok(Message::Phase {
                name: name(args[0])?,
            })
        }
        "RESULT" => {
            want("RESULT", 3)?;
            let outcome = match args[1] {
                "reproduced" => Outcome::Reproduced,
                "intact" => Outcome::Intact,
                "error" => Outcome::Error,
                other => return Err(ParseError::BadKeyword(other.chars().take(16).collect())),
            };
            Ok(Message::Result {
                trial: number(args[0])?,
                outcome,
                detail: text(args[2])?,
            })
        }
        "FACT" => {
            want("FACT", 2)?;
            Ok(Message::Fact {
                key: name(args[0])?,
                value: text(args[1])?,
            })
        }
        "SAMPLE" => {
            want("SAMPLE", 4)?;
            Ok(Message::Sample {
                bench: name(args[0])?,
                rep: number(args[1])?,
                ns: number(args[2])?,
                ops: number(args[3])?,
            })
        }
        "EXIT" => {
            want("EXIT", 1)?;
            Ok(Message::Exit {
                code: number(args[0])?,
            })
        }
        other => Err(ParseError::UnknownVerb(other.chars().take(16).collect())),
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Reproduced => "reproduced",
            Outcome::Intact => "intact",
            Outcome::Error => "error",
        })
    }
}

impl fmt::Display for Message {
    /// The wire form, without the newline. `parse_line(m.to_string())` gives `m` back
    /// for every message whose names are valid.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Hello { version } => write!(f, "HELLO {version}"),
            Message::Output { stream, data } => {
                let s = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                write!(f, "OUT {s} {}", escape(data))
            }
            Message::Ready { name, cpu, tid } => write!(f, "READY {name} {cpu} {tid}"),
            Message::Gate { name, gpa } => write!(f, "GATE {name} {gpa:x}"),
            Message::Phase { name } => write!(f, "PHASE {name}"),
            Message::Result {
                trial,
                outcome,
                detail,
            } => {
                write!(f, "RESULT {trial} {outcome} {}", escape(detail.as_bytes()))
            }
            Message::Fact { key, value } => write!(f, "FACT {key} {}", escape(value.as_bytes())),
            Message::Sample {
                bench,
                rep,
                ns,
                ops,
            } => write!(f, "SAMPLE {bench} {rep} {ns} {ops}"),
            Message::Exit { code } => write!(f, "EXIT {code}"),
        }
    }
}

/// Splits a byte stream into lines, bounding memory: a line longer than
/// [`MAX_LINE`] is cut and reported as too long instead of growing forever.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl LineSplitter {
    /// Feed bytes; returns each complete line (without `\n`) in order.
    /// Over-long lines come back as exactly `MAX_LINE + 1` bytes so the parser rejects them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                if self.overflowed {
                    line.resize(MAX_LINE + 1, b'?');
                    self.overflowed = false;
                }
                lines.push(line);
            } else if self.buf.len() <= MAX_LINE {
                self.buf.push(b);
            } else {
                self.overflowed = true;
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Hello { version: 1 },
            Message::Output {
                stream: Stream::Stdout,
                data: b"hello world\n%\x00\xff".to_vec(),
            },
            Message::Output {
                stream: Stream::Stderr,
                data: vec![],
            },
            Message::Ready {
                name: "reader".into(),
                cpu: 1,
                tid: 77,
            },
            Message::Gate {
                name: "g1".into(),
                gpa: 0x1234_5000,
            },
            Message::Phase {
                name: "setup-done".into(),
            },
            Message::Result {
                trial: 3,
                outcome: Outcome::Reproduced,
                detail: "buf[0]=00 want 5a".into(),
            },
            Message::Fact {
                key: "cpus".into(),
                value: "2".into(),
            },
            Message::Sample {
                bench: "anon-fault-4k.t2".into(),
                rep: 4,
                ns: 123_456_789,
                ops: 4096,
            },
            Message::Exit { code: -7 },
        ];
        for m in msgs {
            let line = m.to_string();
            assert!(!line.contains('\n'));
            assert_eq!(parse_line(line.as_bytes()), Ok(m), "{line}");
        }
    }

    #[test]
    fn rejects_malformed_lines_with_reasons() {
        assert_eq!(parse_line(b""), Err(ParseError::Empty));
        assert!(matches!(
            parse_line(b"EXIT"),
            Err(ParseError::WrongFieldCount { .. })
        ));
        assert!(matches!(
            parse_line(b"EXIT x"),
            Err(ParseError::BadNumber(_))
        ));
        assert!(matches!(
            parse_line(b"RM -rf"),
            Err(ParseError::UnknownVerb(_))
        ));
        assert!(matches!(
            parse_line(b"SAMPLE fork 1 -5 64"),
            Err(ParseError::BadNumber(_))
        ));
        assert!(matches!(
            parse_line(b"READY a;b 1 2"),
            Err(ParseError::BadName(_))
        ));
        assert!(matches!(
            parse_line(b"OUT stdout %4"),
            Err(ParseError::BadEscape(_))
        ));
        assert!(matches!(
            parse_line(b"OUT stdin x"),
            Err(ParseError::BadKeyword(_))
        ));
        assert!(matches!(
            parse_line(&[b'A'; MAX_LINE + 1]),
            Err(ParseError::TooLong(_))
        ));
        assert_eq!(parse_line(b"EXIT 0\r"), Ok(Message::Exit { code: 0 }));
    }

    #[test]
    fn splitter_bounds_long_lines() {
        let mut s = LineSplitter::default();
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nEXIT 1\n");
        let lines = s.push(&input);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE + 1);
        assert!(matches!(parse_line(&lines[0]), Err(ParseError::TooLong(_))));
        assert_eq!(parse_line(&lines[1]), Ok(Message::Exit { code: 1 }));
        // A line split across pushes is reassembled.
        assert!(s.push(b"PHA").is_empty());
        assert_eq!(s.push(b"SE x\n"), vec![b"PHASE x".to_vec()]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn parser_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_line(&data);
            let mut s = LineSplitter::default();
            for line in s.push(&data) {
                let _ = parse_line(&line);
            }
        }

        #[test]
        fn parser_never_panics_on_near_valid_lines(
            verb in prop::sample::select(vec!["HELLO", "OUT", "READY", "GATE", "PHASE", "RESULT", "FACT", "EXIT"]),
            args in proptest::collection::vec("[ -~]{0,12}", 0..5),
        ) {
            let line = format!("{verb} {}", args.join(" "));
            let _ = parse_line(line.as_bytes());
        }

        #[test]
        fn escape_round_trips(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = escape(&data);
            prop_assert!(!e.contains(' ') && !e.contains('\n'));
            prop_assert_eq!(unescape(&e).unwrap(), data);
        }
    }
}
