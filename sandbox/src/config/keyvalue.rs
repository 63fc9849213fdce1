//! `key=value,key=value` option strings, with an optional bare first value (`--cpus 2` = `boot=2`).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyValueError {
    #[error("{option}: unknown key `{key}`; known keys: {known}")]
    UnknownKey {
        option: &'static str,
        key: String,
        known: String,
    },
    #[error("{option}: `{item}` is not key=value")]
    NotKeyValue { option: &'static str, item: String },
    #[error("{option}: key `{key}` given twice")]
    Duplicate { option: &'static str, key: String },
}

pub struct KeyValues {
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    /// Parses `text`; a first item without `=` is the value of `bare_key`.
    pub fn parse(
        option: &'static str,
        text: &str,
        bare_key: Option<&str>,
        known: &[&str],
    ) -> Result<Self, KeyValueError> {
        Self::parse_repeatable(option, text, bare_key, known, &[])
    }

    /// As [`KeyValues::parse`], but the keys in `repeatable` may be given more than once (read
    /// them with [`KeyValues::get_all`]).
    pub fn parse_repeatable(
        option: &'static str,
        text: &str,
        bare_key: Option<&str>,
        known: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, KeyValueError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (i, item) in text.split(',').enumerate() {
            let (key, value) = match (item.split_once('='), bare_key) {
                (Some((k, v)), _) => (k.trim(), v.trim()),
                (None, Some(bare)) if i == 0 => (bare, item.trim()),
                (None, _) => {
                    return Err(KeyValueError::NotKeyValue {
                        option,
                        item: item.to_string(),
                    })
                }
            };
            if !known.contains(&key) {
                return Err(KeyValueError::UnknownKey {
                    option,
                    key: key.to_string(),
                    known: known.join(", "),
                });
            }
            if !repeatable.contains(&key) && pairs.iter().any(|(k, _)| k == key) {
                return Err(KeyValueError::Duplicate {
                    option,
                    key: key.to_string(),
                });
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Self { pairs })
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
