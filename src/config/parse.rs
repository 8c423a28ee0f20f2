//! Reading one variable: durations, numbers within bounds, booleans. Every
//! error names its variable; none quotes more than the value given.

use std::{str::FromStr, time::Duration};

use super::ConfigError;

/// A duration in humantime form (`500ms`, `30s`, `1h`), greater than zero;
/// `default` when unset.
pub(super) fn duration(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => {
            let value = humantime::parse_duration(raw.trim()).map_err(|_| {
                ConfigError::new(
                    name,
                    format!("must be a duration such as 500ms, 30s or 1h, got {raw:?}"),
                )
            })?;
            if value.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
            Ok(value)
        }
    }
}

/// A duration where zero (`0`, `0ms`, `0s`, ...) is allowed: it turns
/// something off.
pub(super) fn duration_or_zero(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(name).as_deref().map(str::trim) {
        Some("0") => Ok(Duration::ZERO),
        Some(raw) if humantime::parse_duration(raw).is_ok_and(|d| d.is_zero()) => {
            Ok(Duration::ZERO)
        }
        _ => duration(get, name, default),
    }
}

/// A whole number from `min` to `max`; `default` when unset.
pub(super) fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match get(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}, got {raw:?}"),
            )),
        },
    }
}

/// `true`/`false` (or `1`/`0`, `yes`/`no`, `on`/`off`); `default` when unset.
pub(super) fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name)
        .map(|raw| raw.trim().to_ascii_lowercase())
        .as_deref()
    {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::new(name, "must be true or false")),
    }
}
