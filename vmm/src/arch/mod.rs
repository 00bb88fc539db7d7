//! Guest-architecture facade: what the layers above the backends need to know about
//! an instruction set, with the same function names for every architecture. The guest
//! architecture is a run-time value ([`Arch`]), not a `cfg`: QEMU's TCG runs an arm64
//! guest on an x86_64 host.

mod x86_64;

pub use self::x86_64::forced_return;

use crate::backend::Regs;

/// A guest architecture. Its [`Arch::name`] is the kernel's name for it (the recipe's
/// `[arch.<name>]` table, the manifest, reports).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64", alias = "x86-64", alias = "amd64")]
    X86_64,
    #[serde(rename = "arm64")]
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The kernel's name (`ARCH=` and `arch/<dir>` aside): `x86_64` or `arm64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the static guest harness is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The ELF machine of the guest's kernel and programs.
    pub fn elf_architecture(self) -> object::Architecture {
        match self {
            Arch::X86_64 => object::Architecture::X86_64,
            Arch::Arm64 => object::Architecture::Aarch64,
        }
    }

    /// The architecture whose ELF machine is `arch`, if memrace runs guests of it.
    pub fn from_elf(arch: object::Architecture) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_architecture() == arch)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        <Arch as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown architecture {s:?}: expected x86_64 or arm64"))
    }
}

/// A function made to return at once from its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForcedReturn {
    /// The registers after the return: the value in the return register, execution at
    /// the return address, the frame the call pushed popped.
    pub regs: Regs,
    /// Where the function returns to.
    pub return_address: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_parse_by_their_kernel_names_and_aliases() {
        assert_eq!("x86_64".parse::<Arch>(), Ok(Arch::X86_64));
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Arm64));
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Arm64));
        let err = "riscv64".parse::<Arch>().unwrap_err();
        assert!(err.contains("x86_64 or arm64"), "{err}");
        assert_eq!(Arch::Arm64.to_string(), "arm64");
        assert_eq!(serde_json::to_string(&Arch::X86_64).unwrap(), "\"x86_64\"");
        assert_eq!(
            Arch::from_elf(object::Architecture::Aarch64),
            Some(Arch::Arm64)
        );
    }
}
