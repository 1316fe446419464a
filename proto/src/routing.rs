//! Which worker owns a key.
//!
//! Every view declares a number of *routing columns*: a prefix of its key columns. All
//! rows whose routing columns are equal live on one worker thread, the *owner*:
//!
//! ```text
//! owner = key_hash(routing text) mod (processes × threads per process)
//! process = owner / threads per process
//! ```
//!
//! where the routing text is the routing columns' values written as text (integers and
//! timestamps in decimal, strings as they are, booleans as `true`/`false`) joined by the
//! unit separator U+001F, and [`key_hash`] is the placement hash of the `tidemark-routing`
//! crate, which the dataflows use too. Timely numbers worker threads process by process, so a process owns the
//! consecutive range of worker indices `[process × threads, (process + 1) × threads)`.
//! Workers place their arrangements by this rule, and the coordinator uses it to send a
//! lookup by key to the owner's process only.

use crate::v1::value::Kind;
use crate::v1::Value;

pub use tidemark_routing::{key_hash, owner, SEPARATOR};

/// The routing text of key values, or `None` if one of them is null or bytes (which no
/// view uses as a routing column).
pub fn routing_text(values: &[Value]) -> Option<String> {
    let mut text = String::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            text.push(SEPARATOR);
        }
        match value.kind.as_ref()? {
            Kind::Int64(v) | Kind::TimestampMs(v) => text.push_str(&v.to_string()),
            Kind::Double(v) => text.push_str(&v.to_string()),
            Kind::String(v) => text.push_str(v),
            Kind::Bool(v) => text.push_str(if *v { "true" } else { "false" }),
            Kind::Bytes(_) => return None,
        }
    }
    Some(text)
}

/// The process that owns the row with these routing-column values.
pub fn owner_process(values: &[Value], processes: usize, threads_per_process: usize) -> Option<usize> {
    let text = routing_text(values)?;
    Some(owner(key_hash(&text), processes * threads_per_process) / threads_per_process.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value;

    #[test]
    fn routing_text_joins_values() {
        let values = [value::string("hour"), value::timestamp_ms(1_700_000_000_000), value::string("country"), value::string("FR")];
        assert_eq!(routing_text(&values).as_deref(), Some("hour\u{1f}1700000000000\u{1f}country\u{1f}FR"));
        assert_eq!(routing_text(&[value::null()]), None);
    }

    #[test]
    fn owner_process_is_within_the_cluster() {
        for i in 0..1000 {
            let p = owner_process(&[value::string(&format!("u{i}"))], 3, 2).expect("strings route");
            assert!(p < 3);
        }
    }
}
