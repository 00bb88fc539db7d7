//! Breakpoint spec syntax, parsed without any debug info so that typos are
//! reported before the (possibly slow) vmlinux load.

use super::SymbolError;

/// A parsed breakpoint spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `0xffffffff81234567`: used as is.
    Address(u64),
    /// `func` or `func+0x12` (offset hex with `0x`, else decimal).
    Function { name: String, offset: u64 },
    /// `mm/rmap.c:1870`: file matched by path suffix.
    Line { file: String, line: u64 },
}

impl Spec {
    pub fn parse(spec: &str) -> Result<Spec, SymbolError> {
        let bad = |reason: &str| SymbolError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(Spec::Address)
                .map_err(|_| bad("not a 64-bit hex address"));
        }
        if let Some((file, line)) = s.rsplit_once(':') {
            if file.is_empty() {
                return Err(bad("the file name before `:` is missing"));
            }
            let line = line
                .parse::<u64>()
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| bad("the line after `:` is not a positive decimal number"))?;
            return Ok(Spec::Line {
                file: file.to_string(),
                line,
            });
        }
        let (name, offset) = match s.split_once('+') {
            Some((name, off)) => (
                name,
                parse_offset(off).ok_or_else(|| bad("bad offset after `+`"))?,
            ),
            None => (s, 0),
        };
        let is_ident = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                // `.` appears in compiler clones such as `foo.constprop.0`.
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        if !is_ident(name) {
            return Err(bad("not a symbol name"));
        }
        Ok(Spec::Function {
            name: name.to_string(),
            offset,
        })
    }
}

fn parse_offset(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str, offset: u64) -> Spec {
        Spec::Function {
            name: name.into(),
            offset,
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            Spec::parse("start_kernel").unwrap(),
            func("start_kernel", 0)
        );
        assert_eq!(
            Spec::parse("try_to_unmap_one+0x12").unwrap(),
            func("try_to_unmap_one", 0x12)
        );
        assert_eq!(
            Spec::parse("do_madvise+18").unwrap(),
            func("do_madvise", 18)
        );
        assert_eq!(
            Spec::parse(" foo.constprop.0 ").unwrap(),
            func("foo.constprop.0", 0)
        );
        assert_eq!(
            Spec::parse("mm/rmap.c:1870").unwrap(),
            Spec::Line {
                file: "mm/rmap.c".into(),
                line: 1870
            }
        );
        assert_eq!(
            Spec::parse("0xffffffff81234567").unwrap(),
            Spec::Address(0xffff_ffff_8123_4567)
        );
        assert_eq!(Spec::parse("0XFF").unwrap(), Spec::Address(0xff));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "   ",
            "0x",
            "0xfffffffff812345670",
            "0xgg",
            ":12",
            "rmap.c:",
            "rmap.c:0",
            "rmap.c:12a",
            "foo+",
            "foo+0x",
            "foo+-1",
            "+0x10",
            "1abc",
            "foo bar",
            "foo+1+2",
        ] {
            let err = Spec::parse(bad).expect_err(bad);
            assert!(matches!(err, SymbolError::BadSpec { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("expected `func`"), "{err}");
        }
    }
}
