//! A tiny built-in `/bin/sh -c` for initramfs images that contain no shell.
//!
//! When the job's argv[0] is `/bin/sh` or `sh` and `/bin/sh` does not exist, the harness runs
//! itself (`/proc/self/exe`) as the shell. Supported grammar (nothing else):
//!
//! * commands separated by `;` or newlines, `&&` and `||` (left to right, like sh);
//! * words split on blanks; `'…'` quotes literally, `"…"` quotes with `\` escaping `"`, `\`,
//!   `$` and `` ` ``; `\x` outside quotes is a literal `x`; `#` at a word start comments out
//!   the rest of the line; there is no expansion of any kind (`$`, globs, `~` are literal);
//! * built-ins: `exit [N]`, `echo [-n] ARGS…`, `cat [FILE…]` (no file: stdin), `true`, `false`;
//! * any other command is executed via PATH (status 127 if not found, 128+sig if killed).
//!
//! Pipes, redirections, `&`, subshells and backquotes are rejected with status 2.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::error::Res;
use crate::{child, command};

/// argv[1] that makes the harness binary act as the built-in shell.
pub const BUILTIN_FLAG: &str = "--memrace-builtin-sh";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Seq,
    And,
    Or,
}

#[derive(Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Op(Op),
}

fn tokenize(script: &str) -> Res<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut chars = script.chars().peekable();
    let mut word: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | ';' => {
                if let Some(w) = word.take() {
                    toks.push(Tok::Word(w));
                }
                if c == '\n' || c == ';' {
                    toks.push(Tok::Op(Op::Seq));
                }
            }
            '&' | '|' => {
                if chars.peek() != Some(&c) {
                    return Err(format!("unsupported syntax: {c}"));
                }
                chars.next();
                if let Some(w) = word.take() {
                    toks.push(Tok::Word(w));
                }
                toks.push(Tok::Op(if c == '&' { Op::And } else { Op::Or }));
            }
            '<' | '>' | '(' | ')' | '`' => return Err(format!("unsupported syntax: {c}")),
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        toks.push(Tok::Op(Op::Seq));
                        break;
                    }
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => w.push(e),
                            Some(other) => {
                                w.push('\\');
                                w.push(other);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => w.push(c),
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        toks.push(Tok::Word(w));
    }
    Ok(toks)
}

/// The script as a list of (how to connect to the previous command, argv).
fn parse(script: &str) -> Res<Vec<(Op, Vec<String>)>> {
    let mut list = Vec::new();
    let mut argv = Vec::new();
    let mut pending = Op::Seq;
    for tok in tokenize(script)? {
        match tok {
            Tok::Word(w) => argv.push(w),
            Tok::Op(op) => {
                if argv.is_empty() {
                    // Empty commands are fine around `;` and newlines, not next to && / ||.
                    if op == Op::Seq && pending == Op::Seq {
                        continue;
                    }
                    return Err("syntax error: missing command".into());
                }
                list.push((pending, std::mem::take(&mut argv)));
                pending = op;
            }
        }
    }
    if argv.is_empty() {
        if pending != Op::Seq {
            return Err("syntax error: missing command".into());
        }
    } else {
        list.push((pending, argv));
    }
    Ok(list)
}

enum Flow {
    Continue(i32),
    Exit(i32),
}

fn cat(files: &[String], out: &mut impl Write) -> i32 {
    let mut status = 0;
    let stdin = ["-".to_string()];
    for name in if files.is_empty() { &stdin[..] } else { files } {
        let input: io::Result<Box<dyn Read>> = if files.is_empty() {
            Ok(Box::new(io::stdin()))
        } else {
            std::fs::File::open(name).map(|f| Box::new(f) as Box<dyn Read>)
        };
        if let Err(e) = input.and_then(|mut input| io::copy(&mut input, out)) {
            eprintln!("cat: {name}: {e}");
            status = 1;
        }
    }
    status
}

/// Run a non-built-in command and wait for it (bounded by the harness' command timeout,
/// which kills the whole process group).
fn external(program: &str, argv: &[String]) -> i32 {
    let Some(path) = child::find_program(OsStr::new(program), command::ENV[0].1) else {
        eprintln!("sh: {program}: not found");
        return 127;
    };
    let args: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let spawned = match child::spawn(&path, &args, &command::ENV, false) {
        Ok(spawned) => spawned,
        Err(e) => {
            eprintln!("sh: {program}: {e}");
            return if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    match child::wait(spawned.pid, Duration::from_secs(24 * 3600), spawned.pid) {
        Ok(ended) => ended.code(),
        Err(e) => {
            eprintln!("sh: {program}: {e}");
            126
        }
    }
}

fn run_one(argv: &[String], last: i32) -> Flow {
    let mut out = io::stdout().lock();
    let status = match argv[0].as_str() {
        "exit" => {
            return match argv.get(1).map(|n| n.parse::<i32>()) {
                None => Flow::Exit(last),
                Some(Ok(n)) => Flow::Exit(n & 0xff),
                Some(Err(_)) => {
                    eprintln!("sh: exit: {}: numeric argument required", argv[1]);
                    Flow::Exit(2)
                }
            }
        }
        "true" => 0,
        "false" => 1,
        "echo" => {
            let (newline, words) = match argv.get(1).map(String::as_str) {
                Some("-n") => (false, &argv[2..]),
                _ => (true, &argv[1..]),
            };
            let mut text = words.join(" ");
            if newline {
                text.push('\n');
            }
            i32::from(out.write_all(text.as_bytes()).is_err())
        }
        "cat" => cat(&argv[1..], &mut out),
        program => {
            drop(out.flush());
            external(program, argv)
        }
    };
    drop(out.flush());
    Flow::Continue(status)
}

fn run_script(script: &str) -> i32 {
    let list = match parse(script) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("sh (memrace built-in): {e}");
            return 2;
        }
    };
    let mut status = 0;
    for (op, argv) in list {
        let skip = match op {
            Op::Seq => false,
            Op::And => status != 0,
            Op::Or => status == 0,
        };
        if skip {
            continue;
        }
        match run_one(&argv, status) {
            Flow::Continue(s) => status = s,
            Flow::Exit(s) => return s,
        }
    }
    status
}

/// Entry point of the built-in shell; `args` are the arguments after [`BUILTIN_FLAG`].
pub fn main(args: &[String]) -> i32 {
    match args {
        [c, script, ..] if c == "-c" => run_script(script),
        _ => {
            eprintln!("sh (memrace built-in): only `sh -c SCRIPT` is supported");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_sequences_and_quotes() {
        let list = parse("cat /proc/cpuinfo; cat /proc/meminfo").unwrap();
        assert_eq!(
            list,
            vec![
                (Op::Seq, words(&["cat", "/proc/cpuinfo"])),
                (Op::Seq, words(&["cat", "/proc/meminfo"]))
            ]
        );
        let list = parse("echo 'a  b'\"c\\\"d\" e\\ f && exit 3 || true # comment\n;").unwrap();
        assert_eq!(
            list,
            vec![
                (Op::Seq, words(&["echo", "a  bc\"d", "e f"])),
                (Op::And, words(&["exit", "3"])),
                (Op::Or, words(&["true"])),
            ]
        );
    }

    #[test]
    fn rejects_unsupported_syntax() {
        for bad in [
            "a | b", "a > f", "a &", "(a)", "echo 'x", "&& a", "a &&", "a ;&& b", "echo `x`",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(";; ;\n").unwrap().is_empty());
    }

    #[test]
    fn runs_builtins_with_sh_semantics() {
        assert_eq!(run_script("exit 7"), 7);
        assert_eq!(run_script("false && exit 3; exit 4"), 4);
        assert_eq!(run_script("false || exit 5"), 5);
        assert_eq!(run_script("true; false"), 1);
        assert_eq!(run_script("false; exit"), 1);
        assert_eq!(run_script("exit 300"), 44);
        assert_eq!(run_script("cat /nonexistent-memrace"), 1);
        assert_eq!(run_script("/nonexistent-memrace-program"), 127);
        assert_eq!(run_script("a | b"), 2);
    }
}
