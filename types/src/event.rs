//! The contract's input events (§1) and the validation that turns every malformed message into
//! a typed [`Rejection`] with a reason, never a panic.

use crate::timefmt::{parse_rfc3339, MAX_MILLIS};
use crate::Millis;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// The largest quantity accepted in one event (absolute value): 10^12. A sum of accepted
/// quantities leaves the `i64` range only after 9.2 million such events on one key; the
/// ledger's running sums (movements, holds, window figures) saturate there rather than wrap
/// (docs/events.md, "Ranges").
pub const MAX_QTY: i64 = 1_000_000_000_000;
/// The longest identifier (`event_id`, `sku`, `location`, `reservation_id`) accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// The largest record accepted, in bytes. Sources keep at most one byte more of a longer one,
/// so an endless line cannot exhaust memory.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// One validated event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; repeats have no further effect.
    pub event_id: String,
    /// The stock-keeping unit (also the Kafka message key).
    pub sku: String,
    /// Business time, epoch milliseconds.
    pub ts: Millis,
    /// What happened.
    pub kind: EventKind,
}

/// The event types of contract §1 with their extra fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// Stock arrived: `on_hand += qty` (qty > 0).
    Received {
        /// Where.
        location: String,
        /// How much.
        qty: i64,
    },
    /// Correction, shrinkage or damage: `on_hand += qty` (qty != 0).
    Adjusted {
        /// Where.
        location: String,
        /// Signed change.
        qty: i64,
    },
    /// The SKU's catalogue category (contract 1.2): no effect on stock; forecasts use it as
    /// the prior of a SKU with little or no history. The latest by `ts`, then `event_id`, wins.
    Listed {
        /// The category.
        category: String,
    },
    /// A cycle count: `on_hand` as of `ts` is `qty` (qty >= 0).
    Counted {
        /// Where.
        location: String,
        /// Counted units.
        qty: i64,
    },
    /// A sale without reservation: `on_hand -= qty` (qty > 0).
    Sold {
        /// Where.
        location: String,
        /// How much.
        qty: i64,
    },
    /// A hold on stock until a terminal event or `expires_at`.
    Reserved {
        /// The reservation.
        reservation_id: String,
        /// Where.
        location: String,
        /// How much (> 0).
        qty: i64,
        /// When the hold lapses (epoch ms), compared with pipeline time.
        expires_at: Millis,
    },
    /// The hold was cancelled.
    Released {
        /// The reservation.
        reservation_id: String,
    },
    /// The hold was shipped: `on_hand -= qty` of the reservation.
    Fulfilled {
        /// The reservation.
        reservation_id: String,
    },
}

/// The two input streams (Kafka topics) of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `received`, `adjusted`, `counted`, `listed`.
    Inventory,
    /// `sold`, `reserved`, `released`, `fulfilled`.
    Orders,
}

impl Stream {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Inventory => "inventory",
            Stream::Orders => "orders",
        }
    }
}

impl EventKind {
    /// The contract's `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Received { .. } => "received",
            EventKind::Adjusted { .. } => "adjusted",
            EventKind::Counted { .. } => "counted",
            EventKind::Listed { .. } => "listed",
            EventKind::Sold { .. } => "sold",
            EventKind::Reserved { .. } => "reserved",
            EventKind::Released { .. } => "released",
            EventKind::Fulfilled { .. } => "fulfilled",
        }
    }

    /// The reservation a `reserved`, `released` or `fulfilled` names.
    pub fn reservation_id(&self) -> Option<&str> {
        match self {
            EventKind::Reserved { reservation_id, .. }
            | EventKind::Released { reservation_id }
            | EventKind::Fulfilled { reservation_id } => Some(reservation_id),
            _ => None,
        }
    }

    /// The stream (topic) the type belongs to.
    pub fn stream(&self) -> Stream {
        match self {
            EventKind::Received { .. }
            | EventKind::Adjusted { .. }
            | EventKind::Counted { .. }
            | EventKind::Listed { .. } => Stream::Inventory,
            _ => Stream::Orders,
        }
    }
}

/// Why an input was rejected. `code()` is the stable label used in metrics and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The bytes are not one JSON object.
    InvalidJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field has the right type but a value outside its range.
    OutOfRange,
    /// `type` is not one of the contract's types.
    UnknownType,
    /// The type belongs to the other topic.
    WrongTopic,
    /// A `counted` event older than the retention horizon, which the pipeline can no longer
    /// apply exactly (see docs/architecture.md, "Bounded state").
    CountTooOld,
    /// The record is longer than [`MAX_RECORD_BYTES`].
    TooLarge,
    /// A `reserved`, `released` or `fulfilled` names a `reservation_id` that belongs to another
    /// SKU (contract §1: an id names one reservation of one SKU).
    ReservationSkuMismatch,
    /// The business `ts` is further ahead of the record's own timestamp (its Kafka timestamp)
    /// than `pipeline.max_clock_skew`: a wrong clock, or a date typed wrong.
    TimestampOutOfRange,
}

impl RejectReason {
    /// Every reason, for metrics that should show zeros.
    pub const ALL: [RejectReason; 10] = [
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::OutOfRange,
        RejectReason::UnknownType,
        RejectReason::WrongTopic,
        RejectReason::CountTooOld,
        RejectReason::TooLarge,
        RejectReason::ReservationSkuMismatch,
        RejectReason::TimestampOutOfRange,
    ];

    /// The stable label.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::WrongTopic => "wrong_topic",
            RejectReason::CountTooOld => "count_too_old",
            RejectReason::TooLarge => "too_large",
            RejectReason::ReservationSkuMismatch => "reservation_sku_mismatch",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
        }
    }
}

/// A rejected input: the reason and a sentence naming the field and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The class of problem.
    pub reason: RejectReason,
    /// What exactly is wrong, e.g. "field `qty` must be an integer".
    pub detail: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected as {}: {}", self.reason.code(), self.detail)
    }
}

impl std::error::Error for Rejection {}

/// The fields of any event, each kept raw so that a problem can be named precisely.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
    #[serde(borrow)]
    location: Option<&'a RawValue>,
    #[serde(borrow)]
    qty: Option<&'a RawValue>,
    #[serde(borrow)]
    reservation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    expires_at: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
}

fn required<'a>(field: &str, v: Option<&'a RawValue>) -> Result<&'a RawValue, Rejection> {
    match v {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err(Rejection::new(
            RejectReason::MissingField,
            format!("field `{field}` is required"),
        )),
    }
}

fn id_field(field: &str, v: Option<&RawValue>) -> Result<String, Rejection> {
    let raw = required(field, v)?;
    let s: String = serde_json::from_str(raw.get()).map_err(|_| {
        Rejection::new(
            RejectReason::WrongType,
            format!("field `{field}` must be a string"),
        )
    })?;
    if s.is_empty() {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` must not be empty"),
        ));
    }
    if s.len() > MAX_ID_LEN {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(s)
}

fn int_field(field: &str, v: Option<&RawValue>) -> Result<i64, Rejection> {
    let raw = required(field, v)?;
    match serde_json::from_str::<i64>(raw.get()) {
        // Not `q.abs()`: it wraps for i64::MIN in release builds (and panics in debug).
        Ok(q) if (-MAX_QTY..=MAX_QTY).contains(&q) => Ok(q),
        Ok(_) => Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` must be within ±{MAX_QTY}"),
        )),
        Err(_) => {
            let is_number = serde_json::from_str::<f64>(raw.get()).is_ok();
            let reason = if is_number && !raw.get().contains(['.', 'e', 'E']) {
                RejectReason::OutOfRange // an integer beyond i64
            } else {
                RejectReason::WrongType
            };
            Err(Rejection::new(
                reason,
                format!("field `{field}` must be an integer"),
            ))
        }
    }
}

fn time_field(field: &str, v: Option<&RawValue>) -> Result<Millis, Rejection> {
    let raw = required(field, v)?;
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| {
            Rejection::new(
                RejectReason::WrongType,
                format!("field `{field}` is not a valid string"),
            )
        })?;
        return parse_rfc3339(&s).ok_or_else(|| {
            Rejection::new(
                RejectReason::OutOfRange,
                format!("field `{field}` must be an RFC 3339 timestamp between 1970 and 9999"),
            )
        });
    }
    match serde_json::from_str::<u64>(text) {
        Ok(ms) if ms <= MAX_MILLIS => Ok(ms),
        Ok(_) => Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` must be epoch milliseconds before year 10000"),
        )),
        Err(_) if serde_json::from_str::<i64>(text).is_ok() => Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` must not be before 1970"),
        )),
        Err(_) => Err(Rejection::new(
            RejectReason::WrongType,
            format!("field `{field}` must be an RFC 3339 string or integer epoch milliseconds"),
        )),
    }
}

fn check_qty(field: &str, qty: i64, ok: bool, rule: &str) -> Result<i64, Rejection> {
    if ok {
        Ok(qty)
    } else {
        Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("field `{field}` must be {rule}"),
        ))
    }
}

/// Decodes and validates one message value. Unknown extra fields are ignored (the contract
/// lets fields be added).
pub fn decode(bytes: &[u8]) -> Result<Event, Rejection> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("the record is longer than {MAX_RECORD_BYTES} bytes"),
        ));
    }
    let raw: RawEvent<'_> = serde_json::from_slice(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidJson,
            format!("not a JSON event object: {e}"),
        )
    })?;
    let type_name = id_field("type", raw.kind)?;
    let event_id = id_field("event_id", raw.event_id)?;
    let sku = id_field("sku", raw.sku)?;
    let ts = time_field("ts", raw.ts)?;
    let kind = match type_name.as_str() {
        "received" => {
            let qty = int_field("qty", raw.qty)?;
            EventKind::Received {
                location: id_field("location", raw.location)?,
                qty: check_qty("qty", qty, qty > 0, "greater than 0 for `received`")?,
            }
        }
        "adjusted" => {
            let qty = int_field("qty", raw.qty)?;
            EventKind::Adjusted {
                location: id_field("location", raw.location)?,
                qty: check_qty("qty", qty, qty != 0, "non-zero for `adjusted`")?,
            }
        }
        "counted" => {
            let qty = int_field("qty", raw.qty)?;
            EventKind::Counted {
                location: id_field("location", raw.location)?,
                qty: check_qty("qty", qty, qty >= 0, "0 or more for `counted`")?,
            }
        }
        "listed" => EventKind::Listed {
            category: id_field("category", raw.category)?,
        },
        "sold" => {
            let qty = int_field("qty", raw.qty)?;
            EventKind::Sold {
                location: id_field("location", raw.location)?,
                qty: check_qty("qty", qty, qty > 0, "greater than 0 for `sold`")?,
            }
        }
        "reserved" => {
            let qty = int_field("qty", raw.qty)?;
            EventKind::Reserved {
                reservation_id: id_field("reservation_id", raw.reservation_id)?,
                location: id_field("location", raw.location)?,
                qty: check_qty("qty", qty, qty > 0, "greater than 0 for `reserved`")?,
                expires_at: time_field("expires_at", raw.expires_at)?,
            }
        }
        "released" => EventKind::Released {
            reservation_id: id_field("reservation_id", raw.reservation_id)?,
        },
        "fulfilled" => EventKind::Fulfilled {
            reservation_id: id_field("reservation_id", raw.reservation_id)?,
        },
        other => {
            return Err(Rejection::new(
                RejectReason::UnknownType,
                format!("`type` {other:?} is not one of received, adjusted, counted, listed, sold, reserved, released, fulfilled"),
            ))
        }
    };
    Ok(Event {
        event_id,
        sku,
        ts,
        kind,
    })
}

/// Decodes a message read from a topic that carries `expected` types only.
pub fn decode_from(bytes: &[u8], expected: Stream) -> Result<Event, Rejection> {
    let ev = decode(bytes)?;
    if ev.kind.stream() != expected {
        return Err(Rejection::new(
            RejectReason::WrongTopic,
            format!(
                "`type` {:?} belongs to the {} topic, not {}",
                ev.kind.type_name(),
                ev.kind.stream().as_str(),
                expected.as_str()
            ),
        ));
    }
    Ok(ev)
}

/// Encodes an event as the contract's JSON (epoch-millisecond timestamps).
pub fn encode(ev: &Event) -> String {
    use serde_json::json;
    let mut v =
        json!({"event_id": ev.event_id, "type": ev.kind.type_name(), "sku": ev.sku, "ts": ev.ts});
    let m = v.as_object_mut().expect("object literal");
    match &ev.kind {
        EventKind::Received { location, qty }
        | EventKind::Adjusted { location, qty }
        | EventKind::Counted { location, qty }
        | EventKind::Sold { location, qty } => {
            m.insert("location".into(), json!(location));
            m.insert("qty".into(), json!(qty));
        }
        EventKind::Reserved {
            reservation_id,
            location,
            qty,
            expires_at,
        } => {
            m.insert("reservation_id".into(), json!(reservation_id));
            m.insert("location".into(), json!(location));
            m.insert("qty".into(), json!(qty));
            m.insert("expires_at".into(), json!(expires_at));
        }
        EventKind::Released { reservation_id } | EventKind::Fulfilled { reservation_id } => {
            m.insert("reservation_id".into(), json!(reservation_id));
        }
        EventKind::Listed { category } => {
            m.insert("category".into(), json!(category));
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(json: &str) -> &'static str {
        decode(json.as_bytes()).unwrap_err().reason.code()
    }

    #[test]
    fn listed_names_a_category_for_every_location() {
        let ev =
            decode(br#"{"event_id":"e","type":"listed","sku":"S","ts":5,"category":"FOODS_3"}"#)
                .unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Listed {
                category: "FOODS_3".into()
            }
        );
        assert_eq!(ev.kind.stream(), Stream::Inventory);
        assert_eq!(decode(encode(&ev).as_bytes()).unwrap(), ev);
        assert_eq!(
            reason(r#"{"event_id":"e","type":"listed","sku":"S","ts":5}"#),
            "missing_field"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"listed","sku":"S","ts":5,"category":""}"#),
            "out_of_range"
        );
    }

    #[test]
    fn accepts_both_timestamp_forms() {
        let a = decode(br#"{"event_id":"e","type":"sold","sku":"S","ts":"2026-11-27T12:00:00.000Z","location":"L","qty":2}"#).unwrap();
        let b = decode(br#"{"event_id":"e","type":"sold","sku":"S","ts":1795780800000,"location":"L","qty":2}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn names_every_problem() {
        for (input, want) in [
            ("{", "invalid_json"),
            ("[1]", "invalid_json"),
            (
                r#"{"type":"sold","sku":"S","ts":1,"location":"L","qty":1}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":null}"#,
                "missing_field",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":"2"}"#,
                "wrong_type",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":2.5}"#,
                "wrong_type",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":0}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"adjusted","sku":"S","ts":1,"location":"L","qty":0}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"counted","sku":"S","ts":1,"location":"L","qty":-1}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"","ts":1,"location":"L","qty":1}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":-5,"location":"L","qty":1}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":"noon","location":"L","qty":1}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":true,"location":"L","qty":1}"#,
                "wrong_type",
            ),
            (
                r#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":99999999999999999999}"#,
                "out_of_range",
            ),
            (
                r#"{"event_id":"e","type":"stolen","sku":"S","ts":1}"#,
                "unknown_type",
            ),
            (
                r#"{"event_id":"e","type":"reserved","sku":"S","ts":1,"location":"L","qty":1,"reservation_id":"r"}"#,
                "missing_field",
            ),
        ] {
            assert_eq!(reason(input), want, "{input}");
        }
    }

    #[test]
    fn details_name_the_field() {
        let r = decode(br#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":7,"qty":1}"#)
            .unwrap_err();
        assert!(r.detail.contains("`location`"), "{}", r.detail);
    }

    #[test]
    fn oversized_records_are_rejected() {
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(decode(&big).unwrap_err().reason, RejectReason::TooLarge);
    }

    #[test]
    fn topic_mismatch_is_rejected() {
        let sold = br#"{"event_id":"e","type":"sold","sku":"S","ts":1,"location":"L","qty":1}"#;
        assert!(decode_from(sold, Stream::Orders).is_ok());
        assert_eq!(
            decode_from(sold, Stream::Inventory).unwrap_err().reason,
            RejectReason::WrongTopic
        );
    }

    #[test]
    fn ignores_added_fields() {
        assert!(decode(br#"{"event_id":"e","type":"released","sku":"S","ts":1,"reservation_id":"r","channel":"web"}"#).is_ok());
    }

    #[test]
    fn quantities_at_the_i64_boundaries() {
        let adjusted = |q: &str| {
            decode(format!(r#"{{"event_id":"e","type":"adjusted","sku":"S","ts":1,"location":"L","qty":{q}}}"#).as_bytes())
        };
        // i64::MIN passed as in range in release builds (`abs` wraps) and was summed.
        for q in [i64::MIN, i64::MIN + 1, -MAX_QTY - 1, MAX_QTY + 1, i64::MAX] {
            let r = adjusted(&q.to_string()).unwrap_err();
            assert_eq!(r.reason, RejectReason::OutOfRange, "{q}");
        }
        for q in [-MAX_QTY, -1, 1, MAX_QTY] {
            assert!(adjusted(&q.to_string()).is_ok(), "{q}");
        }
    }

    proptest::proptest! {
        #[test]
        fn quantity_is_accepted_exactly_within_max_qty(q in proptest::prelude::any::<i64>()) {
            let json = format!(r#"{{"event_id":"e","type":"adjusted","sku":"S","ts":1,"location":"L","qty":{q}}}"#);
            let ok = q != 0 && i128::from(q).abs() <= i128::from(MAX_QTY);
            proptest::prop_assert_eq!(decode(json.as_bytes()).is_ok(), ok);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn encode_then_decode_is_identity(qty in 1i64..MAX_QTY, ts in 0u64..MAX_MILLIS, exp in 0u64..MAX_MILLIS) {
            let ev = Event { event_id: "e\"1".into(), sku: "S/ü".into(), ts, kind: EventKind::Reserved {
                reservation_id: "r".into(), location: "L".into(), qty, expires_at: exp } };
            proptest::prop_assert_eq!(decode(encode(&ev).as_bytes()).unwrap(), ev);
        }
    }
}
