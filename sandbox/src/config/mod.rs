//! The VM as the user describes it, parsed from the command line with clear errors.

pub mod keyvalue;

use keyvalue::{KeyValueError, KeyValues};
use std::path::PathBuf;
use vmm::memory::{parse_size, SizeError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    KeyValue(#[from] KeyValueError),
    #[error("--memory: {0}")]
    MemorySize(SizeError),
    #[error("--cpus `{0}`: give a whole number of vCPUs from 1 to 255, e.g. --cpus 2")]
    Cpus(String),
    #[error("--serial `{0}`: use stdout, off, or file=PATH")]
    Serial(String),
}

pub enum SerialTarget {
    Stdout,
    File(PathBuf),
    Off,
}

pub fn parse_cpus(text: &str) -> Result<u8, ConfigError> {
    let kv = KeyValues::parse("--cpus", text, Some("boot"), &["boot"])?;
    let boot = kv.get("boot").unwrap_or_default();
    boot.parse::<u8>()
        .map_err(|_| ConfigError::Cpus(boot.to_string()))
}

pub fn parse_memory(text: &str) -> Result<u64, ConfigError> {
    let kv = KeyValues::parse("--memory", text, Some("size"), &["size"])?;
    parse_size(kv.get("size").unwrap_or_default()).map_err(ConfigError::MemorySize)
}

pub fn parse_serial(text: &str) -> Result<SerialTarget, ConfigError> {
    match text {
        "stdout" => Ok(SerialTarget::Stdout),
        "off" => Ok(SerialTarget::Off),
        _ => match text.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialTarget::File(PathBuf::from(path))),
            _ => Err(ConfigError::Serial(text.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_memory() {
        assert_eq!(parse_cpus("2").unwrap(), 2);
        assert_eq!(parse_cpus("boot=4").unwrap(), 4);
        assert_eq!(parse_cpus("0").unwrap(), 0);
        assert!(parse_cpus("4096").is_err());
        assert!(parse_cpus("two").is_err());
        assert!(parse_cpus("boot=2,color=red").is_err());
        assert_eq!(parse_memory("size=1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
        assert!(parse_memory("12XB").is_err());
        assert!(matches!(parse_serial("off"), Ok(SerialTarget::Off)));
        assert!(matches!(
            parse_serial("file=/tmp/x"),
            Ok(SerialTarget::File(_))
        ));
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty").is_err());
    }
}
