//! Unit tests of the delivery helpers that need no broker.

use super::*;

#[test]
fn an_undecodable_payload_is_reported_not_panicked() {
    assert!(
        decode(b"\xff not json", 0)
            .unwrap_err()
            .contains("undecodable payload")
    );
    assert!(
        decode(b"{\"hello\": 1}", 0)
            .unwrap_err()
            .contains("undecodable envelope")
    );
}

#[test]
fn the_attempt_header_reads_any_integer_width() {
    let mut h = FieldTable::default();
    h.insert(headers::ATTEMPT.into(), AMQPValue::LongInt(3));
    let props = BasicProperties::default().with_headers(h);
    assert_eq!(header_i64(&props, headers::ATTEMPT), Some(3));
    assert_eq!(
        header_i64(&BasicProperties::default(), headers::ATTEMPT),
        None
    );
}

#[test]
fn truncation_respects_character_boundaries() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("abc", 10), "abc");
}
