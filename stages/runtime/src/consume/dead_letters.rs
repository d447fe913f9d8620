//! The records a stage cannot handle, published to the dead-letter topic with their
//! reason, each letter bounded by construction.

use super::metrics::LoopMetrics;
use super::subscription::InputRecord;
use crate::codec::AvroRecord;
use crate::publish::{Outgoing, Publisher, SendError};
use crate::records::{now_ms, DeadLetter};
use crate::stage::StageRuntime;

/// Publishes the records a stage could not handle to the dead-letter topic.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    pub publisher: Publisher,
    pub stage: String,
    pub topic: String,
    pub metrics: LoopMetrics,
}

impl DeadLetters {
    pub fn new(runtime: &StageRuntime, publisher: Publisher, metrics: LoopMetrics) -> Self {
        Self {
            publisher,
            stage: runtime.name.clone(),
            topic: runtime.dead_letter_topic.clone(),
            metrics,
        }
    }

    /// Publishes `record`'s dead letter, bounded as [`dead_letter`] says (the error says
    /// what was cut; the original stays at its topic, partition and offset), so the
    /// letter itself fits the dead-letter topic. A letter the topic
    /// refuses is returned as [`SendError::Rejected`]: the stage cannot go on safely.
    pub async fn send(
        &self,
        record: &InputRecord,
        reason: &'static str,
        error: String,
        attempts: u32,
    ) -> Result<(), SendError> {
        let letter = self.letter(record, reason, error, attempts);
        self.publisher
            .send(&letter.topic, &letter.key, &letter.payload)
            .await?;
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        Ok(())
    }

    /// `record`'s dead letter as a record to publish.
    pub fn letter(
        &self,
        record: &InputRecord,
        reason: &'static str,
        error: String,
        attempts: u32,
    ) -> Outgoing {
        dead_letter(
            &self.stage,
            &self.topic,
            Origin {
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
            },
            reason,
            error,
            attempts,
        )
    }
}

/// Where a dead-lettered record was read.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// The dead letter of a record `stage` could not handle, bound for `dead_letter_topic`
/// and keyed by the original key. Its size is bounded by construction, whatever the
/// record held: the value is cut to [`DeadLetter::MAX_VALUE`] bytes, the key to
/// [`DeadLetter::MAX_KEY`] and the error text (which may echo record fields) to
/// [`DeadLetter::MAX_ERROR`]; the error says what was cut, and the original stays at
/// its offset. So a letter never exceeds [`DeadLetter::MAX_BYTES`] and the topic cannot
/// refuse it (a refused letter stops the stage onto the same record again).
pub fn dead_letter(
    stage: &str,
    dead_letter_topic: &str,
    origin: Origin<'_>,
    reason: &str,
    mut error: String,
    attempts: u32,
) -> Outgoing {
    let mut cuts = Vec::new();
    if error.len() > DeadLetter::MAX_ERROR {
        cuts.push(format!(
            "error cut to {} of {} bytes",
            DeadLetter::MAX_ERROR,
            error.len()
        ));
        let mut end = DeadLetter::MAX_ERROR;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    let (value, cut) = excerpt(origin.value, DeadLetter::MAX_VALUE, "value");
    cuts.extend(cut);
    let (key, cut) = excerpt(origin.key, DeadLetter::MAX_KEY, "key");
    cuts.extend(cut);
    if !cuts.is_empty() {
        error.push_str(&format!(" ({})", cuts.join(", ")));
    }
    tracing::warn!(
        %stage, reason, %error,
        topic = %origin.topic, partition = origin.partition, offset = origin.offset,
        "dead-lettering record"
    );
    let letter = DeadLetter {
        stage: stage.to_string(),
        reason: reason.to_string(),
        error,
        topic: origin.topic.to_string(),
        partition: origin.partition,
        offset: origin.offset,
        attempts: attempts as i32,
        key: key.clone(),
        value,
        failed_at_ms: now_ms(),
    };
    Outgoing {
        topic: dead_letter_topic.to_string(),
        partition: None,
        key: key.unwrap_or_default(),
        payload: letter
            .encode()
            .expect("a DeadLetter always encodes: its schema is tested"),
    }
}

/// The first `max` bytes of `bytes`, and what was cut, if anything.
fn excerpt(bytes: Option<&[u8]>, max: usize, what: &str) -> (Option<Vec<u8>>, Option<String>) {
    match bytes {
        Some(b) if b.len() > max => (
            Some(b[..max].to_vec()),
            Some(format!(
                "{what} cut to its first {max} of {} bytes",
                b.len()
            )),
        ),
        other => (other.map(<[u8]>::to_vec), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest letter a record can cause: the input topics take up to 2 MiB, so a
    /// key and a value of 1 MiB each, and an error echoing the key whole (as
    /// "scheme … is not allowed" or "… is no pack of the clone store" do).
    #[test]
    fn a_letter_is_bounded_whatever_the_record_held() {
        let key: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let value = vec![7u8; 1 << 20];
        let error = format!("scheme {} is not allowed", "é".repeat(1 << 19));
        let letter = dead_letter(
            "downloader",
            "dead-letters",
            Origin {
                topic: "repo-urls",
                partition: 0,
                offset: 1,
                key: Some(&key),
                value: Some(&value),
            },
            "invalid",
            error,
            1,
        );
        let size = letter.key.len() + letter.payload.len();
        assert!(size <= DeadLetter::MAX_BYTES, "{size} bytes");
        const { assert!(DeadLetter::MAX_BYTES < crate::topology::KAFKA_DEFAULT_MAX_MESSAGE_BYTES) };
        let decoded = DeadLetter::decode(&letter.payload).unwrap();
        assert_eq!(decoded.key.as_deref(), Some(&key[..DeadLetter::MAX_KEY]));
        assert_eq!(
            decoded.value.as_deref(),
            Some(&value[..DeadLetter::MAX_VALUE])
        );
        let (head, tail): (String, String) = (
            decoded.error.chars().take(9).collect(),
            decoded
                .error
                .chars()
                .rev()
                .take(128)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        );
        assert_eq!(head, "scheme éé");
        assert_eq!(
            tail,
            "(error cut to 8192 of 1048598 bytes, value cut to its first 262144 of \
             1048576 bytes, key cut to its first 4096 of 1048576 bytes)"
        );
    }
}
