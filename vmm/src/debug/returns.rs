//! What a function returns, as the debug info declares it: what a forced return (fault
//! injection) may hand its caller.

use super::{Spec, Symbols};

/// Why `spec` cannot be made to return `value` at once on this kernel, if it cannot: the
/// breakpoint must be a function's entry (a bare function name), the function must not
/// also be inlined (those calls would run unfailed), and `value` must be one its
/// declared return type can hold.
pub fn injection_problem(symbols: &Symbols, spec: &str, value: i64) -> Option<String> {
    let name = match Spec::parse(spec) {
        Ok(Spec::Function { name, offset: 0 }) => name,
        Ok(_) => {
            return Some(format!(
                "a forced return needs a function's entry: `{spec}` is not a bare function name (an offset, a file:line or an address lands inside a function, after it has saved registers)"
            ))
        }
        Err(e) => return Some(e.to_string()),
    };
    let callers = symbols.inlined_callers(&name);
    if !callers.is_empty() {
        return Some(format!(
            "`{name}` is also inlined into {}: those calls never reach the breakpoint and would run unfailed; inject at a caller instead",
            callers.join(", ")
        ));
    }
    match symbols.return_type(&name) {
        Ok(ty) => ty
            .accepts(value)
            .err()
            .map(|why| format!("`{name}` cannot return {value}: {why}")),
        Err(e) => Some(e.to_string()),
    }
}

/// A function's return type, by how a value of it travels in the return register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnType {
    Void,
    Bool,
    /// An integer or an enum of `bytes` bytes.
    Integer {
        bytes: u64,
        signed: bool,
    },
    Pointer,
    /// Returned otherwise (a struct, a union, a floating-point value): a forced return
    /// cannot build it. The text names what it is.
    Unsupported(String),
}

/// The largest errno `ERR_PTR` encodes (include/linux/err.h).
const MAX_ERRNO: i64 = 4095;

impl ReturnType {
    /// Whether `value` is something this function could have returned itself: a value of
    /// its type, and for pointers only NULL or an `ERR_PTR(-errno)` (any other pointer
    /// would point at memory nothing allocated).
    pub fn accepts(&self, value: i64) -> Result<(), String> {
        let fits = match self {
            ReturnType::Void => {
                return Err("it returns void: skipping it is not an error path a caller can see (and may skip an unlock); choose a function that returns an error".into())
            }
            ReturnType::Unsupported(what) => {
                return Err(format!("it returns {what}, which a forced return cannot build (only integers, bools, enums and pointers)"))
            }
            ReturnType::Bool => (0..=1).contains(&value),
            ReturnType::Pointer => value == 0 || (-MAX_ERRNO..0).contains(&value),
            ReturnType::Integer { bytes, signed } if *bytes < 8 => {
                let bits = 8 * *bytes as u32;
                let (lo, hi) = if *signed {
                    (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
                } else {
                    // Negative values are allowed as their two's complement (e.g. -1 as
                    // an unsigned int's all-ones error value).
                    (-(1i64 << (bits - 1)), (1i64 << bits) - 1)
                };
                (lo..=hi).contains(&value)
            }
            ReturnType::Integer { .. } => true,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "it returns {self}, which cannot hold {value}{}",
                match self {
                    ReturnType::Pointer => " (a pointer may only be forced to 0 for NULL or to -1..-4095 for ERR_PTR(-errno))",
                    _ => "",
                }
            ))
        }
    }
}

impl std::fmt::Display for ReturnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReturnType::Void => write!(f, "void"),
            ReturnType::Bool => write!(f, "bool"),
            ReturnType::Integer { bytes, signed } => write!(
                f,
                "a {}-bit {} integer",
                bytes * 8,
                if *signed { "signed" } else { "unsigned" }
            ),
            ReturnType::Pointer => write!(f, "a pointer"),
            ReturnType::Unsupported(what) => write!(f, "{what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReturnType::*;

    #[test]
    fn values_are_checked_against_the_return_type() {
        assert!(Pointer.accepts(0).is_ok());
        assert!(Pointer.accepts(-12).is_ok());
        let err = Pointer.accepts(0x1000).unwrap_err();
        assert!(err.contains("ERR_PTR"), "{err}");
        assert!(Pointer.accepts(-4096).is_err());
        let int = Integer {
            bytes: 4,
            signed: true,
        };
        assert!(int.accepts(-12).is_ok());
        assert!(int.accepts(1 << 31).is_err());
        let uint = Integer {
            bytes: 4,
            signed: false,
        };
        assert!(uint.accepts(0xffff_ffff).is_ok() && uint.accepts(-1).is_ok());
        assert!(uint.accepts(1 << 32).is_err());
        assert!(Bool.accepts(1).is_ok() && Bool.accepts(2).is_err());
        assert!(Void.accepts(0).unwrap_err().contains("void"));
        assert!(Unsupported("a struct".into())
            .accepts(0)
            .unwrap_err()
            .contains("a struct"));
    }
}
