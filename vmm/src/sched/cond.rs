//! Breakpoint conditions, evaluated by the bench at each hit.
//!
//! Grammar: `cmp ( "&&" cmp )*`, `cmp := operand OP operand`, OP one of
//! `== != < <= > >=`. Operands: `arg1`..`arg6` (the N-th integer argument at a
//! function's entry, in the kernel's calling convention: the same on every
//! architecture), a register of the guest's architecture (`rdi`, …, `rip`, `rsp` on
//! x86_64; `x0`..`x30`, `sp`, `pc`, `fp`, `lr` on arm64), `tid`/`tgid` (the current guest task,
//! `task_struct.pid`/`.tgid`), `comm` (its name), `hits` (this breakpoint's hit count,
//! this hit included), a number (decimal or 0x-hex), a "string", or a reference to
//! what the guest reported: `$<ready-name>.tid`, `$<ready-name>.cpu`, `$fact.<key>`.

use std::fmt;

use crate::arch::{is_register_name, Arch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Var(String),
    Num(u64),
    Str(String),
    Ref(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmp {
    pub lhs: Operand,
    pub op: Op,
    pub rhs: Operand,
}

/// A parsed condition: every comparison must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition(pub Vec<Cmp>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CondError {
    #[error("condition {text:?}: {why}")]
    Parse { text: String, why: String },
    #[error(
        "unknown variable {0:?} (tid, tgid, comm, hits; arg1..arg6 (arg8 on arm64), the N-th argument at a function's entry; registers rax..r15, rip on x86_64, x0..x30, sp, pc, fp, lr on arm64)"
    )]
    UnknownVar(String),
    #[error("register {name:?} does not exist on {arch}: name the argument instead (arg1, arg2, …), which means the same on every architecture")]
    NotThisArch { name: String, arch: Arch },
    #[error("{0:?} is not known yet: no READY/FACT message gave it in this trial")]
    UnboundRef(String),
    #[error("cannot compare {0} with {1}")]
    TypeMismatch(String, String),
    #[error("reading {what} failed: {why}")]
    Read { what: String, why: String },
}

/// Variables every guest has (registers come from the architecture).
const TASK_VARIABLES: [&str; 4] = ["tid", "tgid", "comm", "hits"];

fn operand(tok: &str, text: &str) -> Result<Operand, CondError> {
    let err = |why: &str| CondError::Parse {
        text: text.to_string(),
        why: why.to_string(),
    };
    if let Some(s) = tok.strip_prefix('"') {
        return s
            .strip_suffix('"')
            .map(|s| Operand::Str(s.to_string()))
            .ok_or_else(|| err("unterminated string"));
    }
    if let Some(r) = tok.strip_prefix('$') {
        return if r.contains('.') && !r.starts_with('.') && !r.ends_with('.') {
            Ok(Operand::Ref(r.to_string()))
        } else {
            Err(err("a reference looks like $reader.tid or $fact.addr.y"))
        };
    }
    if let Some(h) = tok.strip_prefix("0x") {
        return u64::from_str_radix(h, 16)
            .map(Operand::Num)
            .map_err(|_| err("bad hex number"));
    }
    if tok.bytes().all(|b| b.is_ascii_digit()) && !tok.is_empty() {
        return tok
            .parse()
            .map(Operand::Num)
            .map_err(|_| err("number too large"));
    }
    // Which architecture runs is known only at the trial: a register of any of them
    // parses, and `Condition::check_registers` refuses a foreign one before arming.
    if TASK_VARIABLES.contains(&tok) || Arch::ALL.iter().any(|a| is_register_name(*a, tok)) {
        return Ok(Operand::Var(tok.to_string()));
    }
    Err(CondError::UnknownVar(tok.to_string()))
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, CondError> {
        let mut cmps = Vec::new();
        for part in text.split("&&") {
            let toks: Vec<&str> = part.split_whitespace().collect();
            let [lhs, op, rhs] = toks[..] else {
                return Err(CondError::Parse {
                    text: text.to_string(),
                    why: format!("expected `left OP right`, got {:?}", part.trim()),
                });
            };
            let op = match op {
                "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => {
                    return Err(CondError::Parse {
                        text: text.to_string(),
                        why: format!("unknown operator {other:?}"),
                    })
                }
            };
            cmps.push(Cmp {
                lhs: operand(lhs, text)?,
                op,
                rhs: operand(rhs, text)?,
            });
        }
        Ok(Condition(cmps))
    }

    /// Refuse a register that `arch` does not have (`rdx` on arm64).
    pub fn check_registers(&self, arch: Arch) -> Result<(), CondError> {
        let foreign = self
            .0
            .iter()
            .flat_map(|c| [&c.lhs, &c.rhs])
            .find_map(|o| match o {
                Operand::Var(v)
                    if !TASK_VARIABLES.contains(&v.as_str()) && !is_register_name(arch, v) =>
                {
                    Some(v)
                }
                _ => None,
            });
        match foreign {
            Some(name) => Err(CondError::NotThisArch {
                name: name.clone(),
                arch,
            }),
            None => Ok(()),
        }
    }

    /// Does the condition read the current task (needs guest memory reads)?
    pub fn needs_task(&self) -> bool {
        self.0.iter().any(|c| {
            [&c.lhs, &c.rhs]
                .iter()
                .any(|o| matches!(o, Operand::Var(v) if v == "tid" || v == "tgid" || v == "comm"))
        })
    }

    /// Evaluate with `lookup` giving variables and references.
    pub fn eval(
        &self,
        lookup: &mut dyn FnMut(&Operand) -> Result<Value, CondError>,
    ) -> Result<bool, CondError> {
        for c in &self.0 {
            let (l, r) = (lookup(&c.lhs)?, lookup(&c.rhs)?);
            let holds = match (&l, &r) {
                (Value::Num(a), Value::Num(b)) => match c.op {
                    Op::Eq => a == b,
                    Op::Ne => a != b,
                    Op::Lt => a < b,
                    Op::Le => a <= b,
                    Op::Gt => a > b,
                    Op::Ge => a >= b,
                },
                (Value::Str(a), Value::Str(b)) if matches!(c.op, Op::Eq | Op::Ne) => {
                    (a == b) == (c.op == Op::Eq)
                }
                _ => return Err(CondError::TypeMismatch(l.to_string(), r.to_string())),
            };
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Num(u64),
    Str(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Num(n) => write!(f, "{n:#x}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |o: &Operand| match o {
            Operand::Var(v) => v.clone(),
            Operand::Num(n) => format!("{n:#x}"),
            Operand::Str(s) => format!("{s:?}"),
            Operand::Ref(r) => format!("${r}"),
        };
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|c| {
                let op = match c.op {
                    Op::Eq => "==",
                    Op::Ne => "!=",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                };
                format!("{} {op} {}", show(&c.lhs), show(&c.rhs))
            })
            .collect();
        f.write_str(&parts.join(" && "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, tid: u64, hits: u64) -> Result<bool, CondError> {
        let c = Condition::parse(text)?;
        c.eval(&mut |o| match o {
            Operand::Num(n) => Ok(Value::Num(*n)),
            Operand::Str(s) => Ok(Value::Str(s.clone())),
            Operand::Var(v) if v == "tid" => Ok(Value::Num(tid)),
            Operand::Var(v) if v == "hits" => Ok(Value::Num(hits)),
            Operand::Var(v) if v == "comm" => Ok(Value::Str("guest-harness".into())),
            Operand::Var(v) => Err(CondError::UnknownVar(v.clone())),
            Operand::Ref(r) if r == "reader.tid" => Ok(Value::Num(77)),
            Operand::Ref(r) => Err(CondError::UnboundRef(r.clone())),
        })
    }

    #[test]
    fn registers_parse_for_any_architecture_and_are_checked_for_the_guest_s() {
        let portable = Condition::parse("arg3 == 0x1000 && tid == 7").unwrap();
        let x86 = Condition::parse("rdx == 0x1000").unwrap();
        let arm = Condition::parse("x2 == 0x1000 && lr != 0").unwrap();
        for arch in Arch::ALL {
            portable.check_registers(arch).unwrap();
        }
        x86.check_registers(Arch::X86_64).unwrap();
        arm.check_registers(Arch::Arm64).unwrap();
        let err = x86.check_registers(Arch::Arm64).unwrap_err();
        assert!(
            err.to_string().contains("\"rdx\" does not exist on arm64"),
            "{err}"
        );
        assert!(matches!(
            arm.check_registers(Arch::X86_64),
            Err(CondError::NotThisArch { .. })
        ));
        assert!(matches!(
            Condition::parse("x31 == 1"),
            Err(CondError::UnknownVar(_))
        ));
    }

    #[test]
    fn evaluates_conjunctions() {
        assert!(eval("tid == $reader.tid", 77, 1).unwrap());
        assert!(!eval("tid == $reader.tid", 78, 1).unwrap());
        assert!(eval("tid == 77 && hits >= 2", 77, 2).unwrap());
        assert!(!eval("tid == 77 && hits >= 2", 77, 1).unwrap());
        assert!(eval("comm == \"guest-harness\"", 0, 0).unwrap());
        assert!(eval("hits == 0x3", 0, 3).unwrap());
    }

    #[test]
    fn reports_bad_conditions() {
        assert!(matches!(
            Condition::parse("tid ="),
            Err(CondError::Parse { .. })
        ));
        assert!(matches!(
            Condition::parse("tid =~ 3"),
            Err(CondError::Parse { .. })
        ));
        assert!(matches!(
            Condition::parse("pidd == 3"),
            Err(CondError::UnknownVar(_))
        ));
        assert!(matches!(
            Condition::parse("tid == $reader"),
            Err(CondError::Parse { .. })
        ));
        assert!(matches!(
            eval("tid == $writer.tid", 1, 1),
            Err(CondError::UnboundRef(_))
        ));
        assert!(matches!(
            eval("comm == 3", 1, 1),
            Err(CondError::TypeMismatch(..))
        ));
        assert!(matches!(
            eval("comm < \"a\"", 1, 1),
            Err(CondError::TypeMismatch(..))
        ));
    }

    #[test]
    fn needs_task_only_for_task_variables() {
        assert!(Condition::parse("tid == 1").unwrap().needs_task());
        assert!(!Condition::parse("rdx == 1 && hits > 2")
            .unwrap()
            .needs_task());
        assert_eq!(
            Condition::parse("rdx == 0x10 && comm != \"x\"")
                .unwrap()
                .to_string(),
            "rdx == 0x10 && comm != \"x\""
        );
    }
}
