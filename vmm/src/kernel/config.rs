//! Kernel configuration: tinyconfig + fragments via the kernel's own merge_config.sh,
//! then a check that every requested option survived Kconfig's dependency resolution.

use super::recipe::ArchRecipe;
use super::{run_checked, KernelError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One requested option: `CONFIG_X=value`, or `# CONFIG_X is not set` (value `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub name: String,
    pub value: Option<String>,
}

/// Options a fragment requests, in order. Later fragments override earlier ones.
pub fn requested(fragment: &str) -> Vec<Requested> {
    fragment
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            if let Some(rest) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                return rest.starts_with("CONFIG_").then(|| Requested {
                    name: rest.to_string(),
                    value: None,
                });
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_").then(|| Requested {
                name: name.to_string(),
                value: Some(value.to_string()),
            })
        })
        .collect()
}

/// Requested options that the final `.config` does not have, as human-readable lines.
pub fn missing(requests: &[Requested], config: &str) -> Vec<String> {
    let mut last: Vec<&Requested> = Vec::new();
    for r in requests {
        last.retain(|x| x.name != r.name);
        last.push(r);
    }
    last.into_iter()
        .filter_map(|r| {
            let set = config
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{}=", r.name)));
            match (&r.value, set) {
                (Some(want), Some(got)) if want == got => None,
                (None, None) => None,
                (Some(want), got) => Some(format!(
                    "{}={} (got {})",
                    r.name,
                    want,
                    got.unwrap_or("not set")
                )),
                (None, Some(got)) => Some(format!("{} should be unset (got {})", r.name, got)),
            }
        })
        .collect()
}

/// What [`configure`] does when Kconfig drops requested options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DroppedOptions {
    /// Fail: the fragments are written for this source, so a drop is a bug to fix.
    Refuse,
    /// Warn on stderr and go on: a kernel of another version may lack some options.
    Warn,
}

/// Write `<build>/.config` for `tree` from the architecture's base config plus
/// `fragments`, and verify it. Every step sees the architecture's `ARCH=` and
/// `CROSS_COMPILE=` (Kconfig reads the compiler's version and capabilities).
pub fn configure(
    tree: &Path,
    build: &Path,
    arch: &ArchRecipe,
    fragments: &[PathBuf],
    dropped: DroppedOptions,
) -> Result<(), KernelError> {
    let vars = arch.make_vars();
    let make = |target: &str| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(tree)
            .arg(format!("O={}", build.display()))
            .args(&vars)
            .arg(target);
        cmd
    };
    let base = &arch.base;
    run_checked(&mut make(base), &format!("make {base}"))?;
    let mut merge = Command::new(tree.join("scripts/kconfig/merge_config.sh"));
    // merge_config.sh takes them from the environment.
    for var in &vars {
        if let Some((name, value)) = var.split_once('=') {
            merge.env(name, value);
        }
    }
    merge
        .arg("-m")
        .arg("-O")
        .arg(build)
        .arg(build.join(".config"))
        .args(fragments)
        .current_dir(tree);
    run_checked(&mut merge, "merge_config.sh")?;
    run_checked(&mut make("olddefconfig"), "make olddefconfig")?;

    let mut requests = Vec::new();
    for f in fragments {
        let text = std::fs::read_to_string(f).map_err(|e| KernelError::io(f, e))?;
        requests.extend(requested(&text));
    }
    let config_path = build.join(".config");
    let config =
        std::fs::read_to_string(&config_path).map_err(|e| KernelError::io(&config_path, e))?;
    let missing = missing(&requests, &config);
    match (missing.is_empty(), dropped) {
        (true, _) => Ok(()),
        (false, DroppedOptions::Refuse) => Err(KernelError::ConfigDropped(missing)),
        (false, DroppedOptions::Warn) => {
            eprintln!(
                "memrace: warning: this kernel's Kconfig dropped requested options \
                 (absent in this version, or unmet dependencies); building without them:\n  {}",
                missing.join("\n  ")
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fragments() {
        let r =
            requested("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nnoise\n");
        assert_eq!(
            r,
            vec![
                Requested {
                    name: "CONFIG_A".into(),
                    value: Some("y".into())
                },
                Requested {
                    name: "CONFIG_B".into(),
                    value: None
                },
                Requested {
                    name: "CONFIG_C".into(),
                    value: Some("\"x y\"".into())
                },
            ]
        );
    }

    #[test]
    fn reports_dropped_options_by_name() {
        let req =
            requested("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=4\nCONFIG_D=8\n");
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=8\n";
        let m = missing(&req, config);
        assert_eq!(
            m,
            vec![
                "CONFIG_B=y (got not set)".to_string(),
                "CONFIG_C should be unset (got y)".to_string()
            ]
        );
    }
}
