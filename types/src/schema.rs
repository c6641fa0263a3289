//! The JSON Schema of the events producers send (docs/events.md), generated from a Rust
//! description of the wire format: `stockflow schema` prints it.
//!
//! The decoder ([`crate::event::decode`]) is what decides; the schema says the same in a form
//! that producers' tools can check before they send. Tests hold the two together: every
//! example of docs/events.md is valid for both or rejected by both, with the documented reason.
//! What the schema cannot say (the topic a type belongs to, a `counted` too old for its log
//! time, an id reused under another SKU, the 1 MiB limit) only the decoder and the pipeline
//! check. Unknown extra fields are allowed: later versions may add fields.

use crate::event::{MAX_ID_LEN, MAX_QTY};
use crate::timefmt::MAX_MILLIS;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// The schema, as JSON (draft 2020-12).
pub fn event_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(WireEvent);
    schema.insert(
        "$id".into(),
        "https://stockflow.dev/schemas/event-1.2.json".into(),
    );
    schema.into()
}

/// One event of the `inventory` or `orders` topic (stockflow contract 1.2). The message key is
/// the SKU; the value is this object, at most 1 MiB.
#[derive(JsonSchema)]
#[schemars(title = "stockflow event")]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)] // a description of the wire format, never built
enum WireEvent {
    /// Stock arrived (topic `inventory`): `on_hand += qty`.
    Received {
        #[serde(flatten)]
        common: Common,
        /// Where.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        location: String,
        /// Units received, greater than 0.
        #[schemars(range(min = 1, max = MAX_QTY))]
        qty: i64,
    },
    /// A correction (topic `inventory`): `on_hand += qty`, negative for shrinkage or damage.
    Adjusted {
        #[serde(flatten)]
        common: Common,
        /// Where.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        location: String,
        /// Units added (or removed, when negative); not 0.
        #[schemars(schema_with = "nonzero_qty")]
        qty: i64,
    },
    /// A cycle count (topic `inventory`): `on_hand` as of `ts` is `qty`; movements at or
    /// before `ts` are superseded, later ones apply on top. The latest count (by `ts`, then
    /// `event_id`) wins.
    Counted {
        #[serde(flatten)]
        common: Common,
        /// Where.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        location: String,
        /// Units counted, 0 or more.
        #[schemars(range(min = 0, max = MAX_QTY))]
        qty: i64,
    },
    /// The SKU's catalogue category (topic `inventory`, contract 1.2), for every location: no
    /// effect on stock; forecasts use it as the prior of a SKU with little or no history. The
    /// latest (by `ts`, then `event_id`) wins.
    Listed {
        #[serde(flatten)]
        common: Common,
        /// The category.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        category: String,
    },
    /// A sale without a reservation (topic `orders`): `on_hand -= qty`.
    Sold {
        #[serde(flatten)]
        common: Common,
        /// Where.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        location: String,
        /// Units sold, greater than 0.
        #[schemars(range(min = 1, max = MAX_QTY))]
        qty: i64,
    },
    /// A hold on stock (topic `orders`) until `expires_at`, unless released or fulfilled first.
    Reserved {
        #[serde(flatten)]
        common: Common,
        /// The reservation: one reservation of one SKU.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        reservation_id: String,
        /// Where.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        location: String,
        /// Units held, greater than 0.
        #[schemars(range(min = 1, max = MAX_QTY))]
        qty: i64,
        /// When the hold lapses (same formats as `ts`).
        #[schemars(schema_with = "timestamp")]
        expires_at: (),
    },
    /// Ends a hold, cancelled (topic `orders`); may arrive before its `reserved`.
    Released {
        #[serde(flatten)]
        common: Common,
        /// The reservation, under the same `sku` as its `reserved`.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        reservation_id: String,
    },
    /// Ends a hold and ships it (topic `orders`): `on_hand -= qty` of the reservation; may
    /// arrive before its `reserved`.
    Fulfilled {
        #[serde(flatten)]
        common: Common,
        /// The reservation, under the same `sku` as its `reserved`.
        #[schemars(length(min = 1, max = MAX_ID_LEN))]
        reservation_id: String,
    },
}

/// The fields of every event.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Common {
    /// Unique per event: a repeat (for the same SKU, within `pipeline.dedup_window` of log
    /// time) has no further effect. At most 256 bytes of UTF-8.
    #[schemars(length(min = 1, max = MAX_ID_LEN))]
    event_id: String,
    /// The stock-keeping unit; also the message key. At most 256 bytes of UTF-8.
    #[schemars(length(min = 1, max = MAX_ID_LEN))]
    sku: String,
    /// When it happened (business time).
    #[schemars(schema_with = "timestamp")]
    ts: (),
}

/// An RFC 3339 string (`2026-11-27T12:00:00.000Z`) or integer epoch milliseconds, from 1970
/// to the end of 9999.
fn timestamp(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "RFC 3339 (e.g. 2026-11-27T12:00:00.000Z) or integer epoch milliseconds, 1970 to 9999",
        "oneOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "minimum": 0, "maximum": MAX_MILLIS}
        ]
    })
}

fn nonzero_qty(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "minimum": -MAX_QTY,
        "maximum": MAX_QTY,
        "not": {"const": 0}
    })
}

#[cfg(test)]
mod tests {
    use super::event_schema;
    use crate::event::decode;

    /// The examples of docs/events.md: each ```json block after a line
    /// `<!-- example: valid -->` or `<!-- example: REASON -->`.
    fn examples() -> Vec<(String, String)> {
        let doc = include_str!("../../docs/events.md");
        let mut out = Vec::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let Some(expect) = line
                .trim()
                .strip_prefix("<!-- example: ")
                .and_then(|r| r.strip_suffix(" -->"))
            else {
                continue;
            };
            assert_eq!(lines.next().map(str::trim), Some("```json"), "{line}");
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push((expect.to_string(), body.join("\n")));
        }
        out
    }

    #[test]
    fn documented_examples_agree_with_schema_and_decoder() {
        let schema = event_schema();
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let examples = examples();
        assert!(examples.len() >= 15, "docs/events.md lost its examples");
        let mut reasons = std::collections::BTreeSet::new();
        for (expect, body) in examples {
            let decoded = decode(body.as_bytes());
            let value: Option<serde_json::Value> = serde_json::from_str(&body).ok();
            if expect == "valid" {
                assert!(decoded.is_ok(), "{body}: {decoded:?}");
                let value = value.expect("valid examples are JSON");
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{body}: {errors:?}");
                continue;
            }
            let rejection = decoded.expect_err(&body);
            assert_eq!(rejection.reason.code(), expect, "{body}: {rejection}");
            reasons.insert(expect.clone());
            // The examples are all of reasons a schema can express (invalid JSON aside).
            if let Some(value) = value {
                assert!(!validator.is_valid(&value), "the schema accepts {body}");
            }
        }
        for reason in [
            "invalid_json",
            "missing_field",
            "wrong_type",
            "out_of_range",
            "unknown_type",
        ] {
            assert!(reasons.contains(reason), "no example of {reason}");
        }
    }

    #[test]
    fn schema_describes_every_type() {
        let text = event_schema().to_string();
        for t in [
            "received",
            "adjusted",
            "counted",
            "listed",
            "sold",
            "reserved",
            "released",
            "fulfilled",
        ] {
            assert!(text.contains(&format!("\"{t}\"")), "{t} missing");
        }
    }
}
