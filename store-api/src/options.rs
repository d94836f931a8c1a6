//! Parsing of a backend's `[backend]` options.

use serde::de::DeserializeOwned;

use crate::StoreError;

/// Parses the `[backend]` table handed to `open`. Declare the options struct
/// with `#[serde(deny_unknown_fields)]` so that a misspelt option is an error
/// naming it.
pub fn parse_options<T: DeserializeOwned>(options: &str) -> Result<T, StoreError> {
    toml::from_str(options).map_err(|err| StoreError::invalid(format!("[backend]: {}", err.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[allow(dead_code)]
        mode: Option<String>,
    }

    #[test]
    fn unknown_options_are_named() {
        assert!(parse_options::<Opts>("mode = \"copy\"").is_ok());
        let err = parse_options::<Opts>("mood = 1").unwrap_err();
        assert!(err.message().contains("mood"), "{err}");
        assert!(!err.message().contains('\n'));
    }
}
