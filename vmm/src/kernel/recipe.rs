//! Kernel recipes and variants: data files under `images/`.

use super::tree::GitSource;
use crate::arch::Arch;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "malformed {path}: {message}\n  fix the file; the format is documented in images/README.md"
    )]
    Malformed { path: PathBuf, message: String },
    #[error("unknown kernel variant {name:?}; known variants: {known}\n  add images/variants/{name}.toml or pick a known one (`memrace kernel list`)")]
    UnknownVariant { name: String, known: String },
    #[error("the recipe has no configuration for architecture {0:?}")]
    NoArch(String),
    #[error("{path} names {what} {name:?}, which does not exist at {missing}")]
    MissingFile {
        path: PathBuf,
        what: &'static str,
        name: String,
        missing: PathBuf,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub tarball: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchRecipe {
    pub base: String,
    pub fragment: String,
    /// The boot image make writes, relative to the build directory
    /// (`arch/x86/boot/bzImage`); its file name is the name it is stored under.
    pub image: String,
    /// The kernel's `ARCH=`; without it make builds for the host.
    #[serde(default)]
    pub make_arch: Option<String>,
    /// The `CROSS_COMPILE=` prefix of the toolchain (`aarch64-linux-gnu-`); without it
    /// the host's `gcc`.
    #[serde(default)]
    pub cross_compile: Option<String>,
}

impl ArchRecipe {
    /// The C compiler the kernel is built with: `gcc` behind the cross prefix.
    pub fn gcc(&self) -> String {
        format!("{}gcc", self.cross_compile.as_deref().unwrap_or(""))
    }

    /// The variables every `make` of this architecture gets (`ARCH=…`,
    /// `CROSS_COMPILE=…`), none for a native build.
    pub fn make_vars(&self) -> Vec<String> {
        let mut vars = Vec::new();
        if let Some(arch) = &self.make_arch {
            vars.push(format!("ARCH={arch}"));
        }
        if let Some(prefix) = &self.cross_compile {
            vars.push(format!("CROSS_COMPILE={prefix}"));
        }
        vars
    }

    /// The name the boot image is stored under in a kernel's directory: the file name
    /// make gives it (`bzImage`, `Image`).
    pub fn image_name(&self) -> &str {
        self.image.rsplit('/').next().unwrap_or(&self.image)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub source: Source,
    pub arch: BTreeMap<String, ArchRecipe>,
}

/// A named kernel: the recipe's base plus ordered patches and extra config fragments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub patches: Vec<String>,
    #[serde(default)]
    pub fragments: Vec<String>,
    /// Which image the guest boots (the build makes both; symbols come from vmlinux).
    #[serde(default)]
    pub boot: BootImage,
    /// Built from this commit instead of the recipe's Debian source.
    #[serde(skip)]
    pub git: Option<GitSource>,
}

/// The kernel image a variant boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum BootImage {
    /// The ELF through its PVH entry: no decompressor, the fastest boot. x86_64 only:
    /// an arm64 kernel always boots its `Image`.
    #[default]
    #[serde(rename = "vmlinux")]
    Vmlinux,
    /// The architecture's boot image (the recipe's `image`): on x86_64 the bzImage's
    /// decompressor and 64-bit boot protocol, for kernels whose PVH path cannot run
    /// (KASAN: the early PVH C code runs before the shadow exists); on arm64 the `Image`.
    #[serde(rename = "bzImage", alias = "Image")]
    Image,
}

/// The `images/` directory: recipe, fragments, patches, variants.
#[derive(Debug, Clone)]
pub struct Images {
    pub dir: PathBuf,
    pub recipe: Recipe,
}

fn read(path: &Path) -> Result<String, RecipeError> {
    std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, RecipeError> {
    toml::from_str(text).map_err(|e| RecipeError::Malformed {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl Recipe {
    pub fn parse(path: &Path, text: &str) -> Result<Recipe, RecipeError> {
        let recipe: Recipe = parse(path, text)?;
        let malformed = |message: String| RecipeError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let s = &recipe.source;
        if s.sha256.len() != 64 || !s.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed(format!(
                "source.sha256 must be 64 hex digits, got {:?}",
                s.sha256
            )));
        }
        if s.package.is_empty() || s.version.is_empty() {
            return Err(malformed(
                "source.package and source.version must not be empty".into(),
            ));
        }
        if recipe.arch.is_empty() {
            return Err(malformed("no [arch.<name>] table".into()));
        }
        Ok(recipe)
    }
}

impl Variant {
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Variant, RecipeError> {
        let mut v: Variant = parse(path, text)?;
        v.name = name.to_string();
        Ok(v)
    }

    /// This variant with the developer's patch files `extra` applied after its own
    /// patches. Paths are made absolute, which [`Images::patch_path`] takes as they are.
    pub fn with_patches(&self, name: &str, extra: &[PathBuf]) -> Variant {
        let mut derived = self.clone();
        derived.name = name.to_string();
        let names: Vec<String> = extra
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or(p.as_os_str())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        derived.description = format!("{} plus patches {}", self.name, names.join(", "));
        derived.patches.extend(extra.iter().map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .to_string_lossy()
                .into_owned()
        }));
        derived
    }

    /// The kernel at `src`'s commit, configured with memrace's own fragment only: the
    /// developer's tree is built as it is, without the recipe's patches or extras.
    pub fn from_git(name: &str, src: GitSource) -> Variant {
        let short = &src.commit[..src.commit.len().min(12)];
        Variant {
            name: name.to_string(),
            description: format!(
                "{} at {} ({short} {:?})",
                src.repo.display(),
                src.rev,
                src.subject
            ),
            patches: Vec::new(),
            fragments: Vec::new(),
            boot: BootImage::Vmlinux,
            git: Some(src),
        }
    }
}

impl Images {
    /// Load `images/recipe.toml` from `dir`.
    pub fn open(dir: &Path) -> Result<Images, RecipeError> {
        let path = dir.join("recipe.toml");
        let recipe = Recipe::parse(&path, &read(&path)?)?;
        Ok(Images {
            dir: dir.to_path_buf(),
            recipe,
        })
    }

    pub fn arch(&self, arch: Arch) -> Result<&ArchRecipe, RecipeError> {
        self.recipe
            .arch
            .get(arch.name())
            .ok_or_else(|| RecipeError::NoArch(arch.name().to_string()))
    }

    /// Names of all declared variants, sorted.
    pub fn variant_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("variants"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Load a variant by name and check that the files it names exist.
    pub fn variant(&self, name: &str) -> Result<Variant, RecipeError> {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let path = self.dir.join("variants").join(format!("{name}.toml"));
        if !valid_name || !path.is_file() {
            return Err(RecipeError::UnknownVariant {
                name: name.to_string(),
                known: self.variant_names().join(", "),
            });
        }
        let variant = Variant::parse(name, &path, &read(&path)?)?;
        for patch in &variant.patches {
            self.existing(&path, "patch", patch, self.dir.join("patches").join(patch))?;
        }
        for fragment in &variant.fragments {
            self.existing(&path, "fragment", fragment, self.dir.join(fragment))?;
        }
        Ok(variant)
    }

    fn existing(
        &self,
        path: &Path,
        what: &'static str,
        name: &str,
        file: PathBuf,
    ) -> Result<(), RecipeError> {
        if file.is_file() {
            Ok(())
        } else {
            Err(RecipeError::MissingFile {
                path: path.to_path_buf(),
                what,
                name: name.to_string(),
                missing: file,
            })
        }
    }

    /// Where a variant's patch is: under `images/patches/`, or an absolute path as it
    /// is (a developer's patch given to [`Variant::with_patches`]).
    pub fn patch_path(&self, patch: &str) -> PathBuf {
        let path = Path::new(patch);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join("patches").join(patch)
        }
    }

    /// The fragments merged for `variant`, in order: the arch base fragment, then the variant's.
    pub fn fragment_paths(&self, arch: &ArchRecipe, variant: &Variant) -> Vec<PathBuf> {
        std::iter::once(&arch.fragment)
            .chain(&variant.fragments)
            .map(|f| self.dir.join(f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
package = "linux-source-6.12"
version = "6.12.117-1~deb12u1"
sha256 = "e849faf31ca3555757f3a8877cb01af92122f744f75d1f3102734651c4e14703"
tarball = "usr/src/linux-source-6.12.tar.xz"
[arch.x86_64]
base = "tinyconfig"
fragment = "x86_64.config"
image = "arch/x86/boot/bzImage"
"#;

    fn p() -> &'static Path {
        Path::new("recipe.toml")
    }

    const ARM64: &str = r#"
[arch.arm64]
base = "tinyconfig"
fragment = "arm64.config"
image = "arch/arm64/boot/Image"
make_arch = "arm64"
cross_compile = "aarch64-linux-gnu-"
"#;

    #[test]
    fn parses_the_recipe() {
        let r = Recipe::parse(p(), GOOD).unwrap();
        assert_eq!(r.source.package, "linux-source-6.12");
        let x86 = &r.arch["x86_64"];
        assert_eq!(x86.base, "tinyconfig");
        assert_eq!(
            (x86.make_arch.as_deref(), x86.cross_compile.as_deref()),
            (None, None)
        );
        assert!(x86.make_vars().is_empty(), "a native build passes no ARCH=");
        assert_eq!(x86.gcc(), "gcc");
        assert_eq!(x86.image_name(), "bzImage");
    }

    #[test]
    fn parses_a_cross_architecture() {
        let r = Recipe::parse(p(), &format!("{GOOD}{ARM64}")).unwrap();
        let arm = &r.arch["arm64"];
        assert_eq!(arm.make_arch.as_deref(), Some("arm64"));
        assert_eq!(arm.cross_compile.as_deref(), Some("aarch64-linux-gnu-"));
        assert_eq!(
            arm.make_vars(),
            ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
        );
        assert_eq!(arm.gcc(), "aarch64-linux-gnu-gcc");
        assert_eq!(arm.image_name(), "Image");
        let typo = format!("{GOOD}{}", ARM64.replace("cross_compile", "cross"));
        let err = Recipe::parse(p(), &typo).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn a_variant_boots_vmlinux_or_the_image_by_either_name() {
        for (text, want) in [
            ("", BootImage::Vmlinux),
            ("boot = \"vmlinux\"\n", BootImage::Vmlinux),
            ("boot = \"bzImage\"\n", BootImage::Image),
            ("boot = \"Image\"\n", BootImage::Image),
        ] {
            let v = Variant::parse("x", p(), &format!("description = \"d\"\n{text}")).unwrap();
            assert_eq!(v.boot, want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_recipes_with_the_reason() {
        let cases = [
            (
                GOOD.replace("sha256 = \"e8", "sha256 = \"zz"),
                "64 hex digits",
            ),
            (
                GOOD.replace("[arch.x86_64]", "[arch.x86_64]\nbogus = 1"),
                "unknown field",
            ),
            (GOOD.replace("package = ", "pkg = "), "unknown field"),
            ("[source\n".to_string(), "malformed"),
            (
                GOOD.split("[arch").next().unwrap().to_string(),
                "missing field `arch`",
            ),
        ];
        for (text, want) in cases {
            let err = Recipe::parse(p(), &text).unwrap_err().to_string();
            assert!(err.contains(want) || err.contains("malformed"), "{err}");
            assert!(err.contains("recipe.toml"), "{err}");
        }
    }

    #[test]
    fn variant_defaults_and_unknown_fields() {
        let v = Variant::parse("x", p(), "description = \"d\"\n").unwrap();
        assert!(v.patches.is_empty() && v.fragments.is_empty());
        assert!(Variant::parse("x", p(), "description = \"d\"\npatch = []\n").is_err());
        assert!(
            Variant::parse("x", p(), "patches = []\n").is_err(),
            "description is required"
        );
    }

    #[test]
    fn repository_images_are_valid() {
        let images =
            Images::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")).unwrap();
        for arch in Arch::ALL {
            let a = images.arch(arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(images.dir.join(&a.fragment).is_file(), "{}", a.fragment);
        }
        let names = images.variant_names();
        assert!(names.contains(&"base".to_string()));
        for name in names {
            images.variant(&name).unwrap_or_else(|e| panic!("{e}"));
        }
        let err = images.variant("no-such-kernel").unwrap_err().to_string();
        assert!(
            err.contains("unknown kernel variant") && err.contains("base"),
            "{err}"
        );
        assert!(images.variant("../recipe").is_err());
    }
}
