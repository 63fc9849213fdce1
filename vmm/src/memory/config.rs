//! What the user asked for with `--memory size=S[,hugepages=2M|1G][,hugetlbfs=DIR][,prefault=on][,shared=on]`,
//! and which backend that selects.

use super::size::{parse_size, SizeError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("--memory size: {0}")]
    Size(SizeError),
    #[error("--memory: no size given: write e.g. --memory 512M or --memory size=2G")]
    NoSize,
    #[error("--memory hugepages={0}: write a hugepage size such as 2M or 1G")]
    PageSize(String),
    #[error("--memory {key}={value}: write {key}=on or {key}=off")]
    Switch { key: &'static str, value: String },
    #[error("--memory hugetlbfs= is empty: give the directory where hugetlbfs is mounted, e.g. hugetlbfs=/dev/hugepages")]
    EmptyDir,
}

/// Guest RAM as configured; [`super::create`] turns it into mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Hugepage size in bytes, when hugepages are wanted.
    pub hugepages: Option<u64>,
    /// A hugetlbfs mount to create the backing file in (per-VM directory, unlinked after mapping).
    pub hugetlbfs: Option<PathBuf>,
    /// Populate every page before the guest runs.
    pub prefault: bool,
    /// Map shared (a file another process, e.g. a vhost-user backend, can map too).
    pub shared: bool,
}

/// The backing chosen from a [`MemoryConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend<'a> {
    /// Private anonymous memory with the host's base pages.
    Anonymous,
    /// A memfd: with hugetlb pages of the given size, or base pages when `None` (shared=on).
    Memfd { hugepages: Option<u64> },
    /// A file in a per-VM directory on this hugetlbfs mount.
    Hugetlbfs {
        dir: &'a Path,
        hugepages: Option<u64>,
    },
}

impl MemoryConfig {
    /// The keys `--memory` accepts; `size` may also be given bare (`--memory 512M`).
    pub const KEYS: [&'static str; 5] = ["size", "hugepages", "hugetlbfs", "prefault", "shared"];

    /// Private anonymous RAM of `size` bytes, the default.
    pub fn anonymous(size: u64) -> Self {
        Self {
            size,
            hugepages: None,
            hugetlbfs: None,
            prefault: false,
            shared: false,
        }
    }

    /// Builds the configuration from already split `key=value` options; `value_of(key)` returns the
    /// value given for one of [`Self::KEYS`].
    pub fn from_options<'a>(
        value_of: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, OptionError> {
        let size = match value_of("size") {
            Some(s) if !s.is_empty() => parse_size(s).map_err(OptionError::Size)?,
            _ => return Err(OptionError::NoSize),
        };
        let hugepages = value_of("hugepages").map(parse_page_size).transpose()?;
        let hugetlbfs = match value_of("hugetlbfs") {
            Some("") => return Err(OptionError::EmptyDir),
            Some(dir) => Some(PathBuf::from(dir)),
            None => None,
        };
        Ok(Self {
            size,
            hugepages,
            hugetlbfs,
            prefault: parse_switch("prefault", value_of("prefault"))?,
            shared: parse_switch("shared", value_of("shared"))?,
        })
    }

    pub fn backend(&self) -> Backend<'_> {
        match (&self.hugetlbfs, self.hugepages) {
            (Some(dir), hugepages) => Backend::Hugetlbfs { dir, hugepages },
            (None, Some(size)) => Backend::Memfd {
                hugepages: Some(size),
            },
            (None, None) if self.shared => Backend::Memfd { hugepages: None },
            (None, None) => Backend::Anonymous,
        }
    }
}

/// A page size: any power of two from 4K that `parse_size` reads (whether the host has it is
/// checked before mapping, see `hugepages::preflight`).
fn parse_page_size(text: &str) -> Result<u64, OptionError> {
    match parse_size(text) {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(OptionError::PageSize(text.to_string())),
    }
}

fn parse_switch(key: &'static str, value: Option<&str>) -> Result<bool, OptionError> {
    match value {
        None | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(OptionError::Switch {
            key,
            value: other.to_string(),
        }),
    }
}

/// `2M`, `1G`, `4K` for power-of-two sizes; bytes otherwise.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<MemoryConfig, OptionError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        MemoryConfig::from_options(|key| {
            owned
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        })
    }

    #[test]
    fn full_syntax() {
        let c = parse(&[
            ("size", "1G"),
            ("hugepages", "2M"),
            ("hugetlbfs", "/dev/hugepages"),
            ("prefault", "on"),
            ("shared", "on"),
        ])
        .unwrap();
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.hugepages, Some(2 << 20));
        assert_eq!(c.hugetlbfs.as_deref(), Some(Path::new("/dev/hugepages")));
        assert!(c.prefault && c.shared);
        assert_eq!(
            c.backend(),
            Backend::Hugetlbfs {
                dir: Path::new("/dev/hugepages"),
                hugepages: Some(2 << 20)
            }
        );
    }

    #[test]
    fn backend_choice() {
        assert_eq!(
            parse(&[("size", "64M")]).unwrap().backend(),
            Backend::Anonymous
        );
        assert_eq!(
            parse(&[("size", "64M"), ("shared", "on")])
                .unwrap()
                .backend(),
            Backend::Memfd { hugepages: None }
        );
        assert_eq!(
            parse(&[("size", "2G"), ("hugepages", "1G")])
                .unwrap()
                .backend(),
            Backend::Memfd {
                hugepages: Some(1 << 30)
            }
        );
        assert!(
            !parse(&[("size", "64M"), ("prefault", "off")])
                .unwrap()
                .prefault
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(parse(&[]), Err(OptionError::NoSize));
        assert_eq!(parse(&[("size", "")]), Err(OptionError::NoSize));
        assert!(matches!(
            parse(&[("size", "12XB")]),
            Err(OptionError::Size(_))
        ));
        assert_eq!(
            parse(&[("size", "1G"), ("hugepages", "3M")]),
            Err(OptionError::PageSize("3M".into()))
        );
        assert_eq!(
            parse(&[("size", "1G"), ("hugepages", "1K")]),
            Err(OptionError::PageSize("1K".into()))
        );
        assert_eq!(
            parse(&[("size", "1G"), ("prefault", "yes")]),
            Err(OptionError::Switch {
                key: "prefault",
                value: "yes".into()
            })
        );
        assert_eq!(
            parse(&[("size", "1G"), ("hugetlbfs", "")]),
            Err(OptionError::EmptyDir)
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(2 << 20), "2M");
        assert_eq!(human_size(1 << 30), "1G");
        assert_eq!(human_size(4096), "4K");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
