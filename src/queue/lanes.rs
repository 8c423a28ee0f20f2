//! Queue names: the plain list every worker knows, the lanes around it, and
//! the service's own keys.
//!
//! Every key carries the hash tag of the queue name: the normal lane is the
//! name itself (`translation_jobs`, whose cluster slot is that of the whole
//! name), the others are `{translation_jobs}:high` and so on, whose slot is
//! that of the part in braces. So all of them share one Redis Cluster slot:
//! a worker's `BLPOP {q}:high q {q}:low 30` works on a cluster, and the relay
//! pushes to every lane in one script call.

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
            Some(suffix) => self.tagged(suffix),
        }
    }

    /// The key of the lane before lanes shared a slot (`<queue>:high`), for
    /// moving what an older version left there.
    pub fn legacy_key(&self, lane: Lane) -> Option<String> {
        lane.suffix().map(|suffix| format!("{}:{suffix}", self.0))
    }

    /// A key of the service's own in the queue's slot: `{<queue>}:<suffix>`.
    pub fn tagged(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Redis list. A priority-aware worker pops with
/// `BLPOP {<queue>}:high <queue> {<queue>}:low 30`; a worker that knows only
/// the plain name sees normal-priority jobs unchanged.
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
    /// The lanes workers pop, in the order a priority-aware worker pops them.
    pub const WAITING: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

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
    fn lanes_are_the_plain_name_and_names_tagged_with_it() {
        let queue = QueueName::parse("translation_jobs").unwrap();
        assert_eq!(queue.key(Lane::Normal), "translation_jobs");
        assert_eq!(queue.key(Lane::High), "{translation_jobs}:high");
        assert_eq!(queue.key(Lane::Low), "{translation_jobs}:low");
        assert_eq!(queue.key(Lane::Dead), "{translation_jobs}:dead");
        assert_eq!(queue.tagged("state"), "{translation_jobs}:state");
        assert_eq!(
            queue.legacy_key(Lane::High).as_deref(),
            Some("translation_jobs:high")
        );
        assert_eq!(queue.legacy_key(Lane::Normal), None);
    }

    /// The CRC16 slot of Redis Cluster, of the hash tag when there is one.
    fn slot(key: &str) -> u16 {
        let tagged = key
            .find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|close| *close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key);
        let mut crc: u16 = 0;
        for byte in tagged.bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn every_key_of_a_queue_shares_the_slot_of_the_plain_name() {
        let queue = QueueName::parse("translation_jobs").unwrap();
        let plain = slot("translation_jobs");
        for lane in Lane::ALL {
            assert_eq!(slot(&queue.key(lane)), plain, "{lane:?}");
        }
        assert_eq!(slot(&queue.tagged("state")), plain);
        assert_eq!(slot(&queue.tagged("pushed:7")), plain);
        // The old names were spread over other slots.
        assert_ne!(slot("translation_jobs:high"), plain);
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
