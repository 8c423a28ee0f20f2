//! Queue names: the plain list every worker knows and the lanes around it.

use std::fmt;

/// Longest queue name accepted, so every derived key stays small.
pub const MAX_QUEUE_NAME_LEN: usize = 200;

/// The base name of the Redis lists (`TRANSLATION_QUEUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueName(String);

/// Why a queue name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueNameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_QUEUE_NAME_LEN} bytes")]
    TooLong,
    #[error("must not contain whitespace, control characters or braces")]
    BadCharacter,
}

impl QueueName {
    pub fn parse(raw: &str) -> Result<Self, QueueNameError> {
        if raw.is_empty() {
            return Err(QueueNameError::Empty);
        }
        if raw.len() > MAX_QUEUE_NAME_LEN {
            return Err(QueueNameError::TooLong);
        }
        // Braces would change the Redis Cluster hash tag of the keys we derive.
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return Err(QueueNameError::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Redis key of one lane.
    pub fn key(&self, lane: Lane) -> String {
        match lane.suffix() {
            None => self.0.clone(),
            Some(suffix) => format!("{}:{suffix}", self.0),
        }
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Redis list. A priority-aware worker pops with
/// `BLPOP <queue>:high <queue> <queue>:low 30`; a worker that knows only the
/// plain name sees normal-priority jobs unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    High,
    Normal,
    Low,
    /// Jobs that ran out of attempts.
    Dead,
}

impl Lane {
    pub const ALL: [Lane; 4] = [Lane::High, Lane::Normal, Lane::Low, Lane::Dead];

    fn suffix(self) -> Option<&'static str> {
        match self {
            Lane::High => Some("high"),
            Lane::Normal => None,
            Lane::Low => Some("low"),
            Lane::Dead => Some("dead"),
        }
    }

    /// The value stored in `outbox.lane`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
            Lane::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Lane::ALL.into_iter().find(|lane| lane.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_the_plain_name_and_suffixed_names() {
        let queue = QueueName::parse("translation_jobs").unwrap();
        assert_eq!(queue.key(Lane::Normal), "translation_jobs");
        assert_eq!(queue.key(Lane::High), "translation_jobs:high");
        assert_eq!(queue.key(Lane::Low), "translation_jobs:low");
        assert_eq!(queue.key(Lane::Dead), "translation_jobs:dead");
    }

    #[test]
    fn lane_names_round_trip() {
        for lane in Lane::ALL {
            assert_eq!(Lane::parse(lane.as_str()), Some(lane));
        }
        assert_eq!(Lane::parse("urgent"), None);
    }

    #[test]
    fn refuses_names_that_would_break_keys() {
        assert_eq!(QueueName::parse(""), Err(QueueNameError::Empty));
        assert_eq!(QueueName::parse("a b"), Err(QueueNameError::BadCharacter));
        assert_eq!(QueueName::parse("{q}"), Err(QueueNameError::BadCharacter));
        assert_eq!(
            QueueName::parse(&"q".repeat(MAX_QUEUE_NAME_LEN + 1)),
            Err(QueueNameError::TooLong)
        );
    }
}
