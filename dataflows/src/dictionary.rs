//! Dimension values as 4-byte codes of one dictionary per process.
//!
//! The values that events repeat (a country, a city, a category, a UTM tag, a device
//! OS, a currency) are held by the views in every retained event, in every session row
//! and in every funnel key. Each distinct value is stored once per process, for the
//! life of the process, and the views hold a [`Dim`]: a 4-byte code that reads back as
//! the value (`&'static str`), compares and orders as the value, and hashes as the value.
//!
//! A code means something only inside its process: rows travel between processes (and
//! to disk, JSON and PostgreSQL) as the value's text, and are interned again where they
//! arrive. So nothing depends on which process saw a value first, or on a restart.
//!
//! The dictionary only grows. Decoding interns with [`Dim::within_limit`], which refuses
//! a new value once the process holds [`MAX_VALUES`] values or [`MAX_BYTES`] bytes of
//! them (the record is rejected as `too_many_values`, see `decode`); values read back
//! from another process are always interned, so a cluster of `n` processes holds at
//! most `n` times the limit.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most distinct values decoding adds to one process's dictionary.
pub const MAX_VALUES: usize = 1 << 20;

/// The most bytes of distinct values decoding adds to one process's dictionary.
pub const MAX_BYTES: usize = 64 << 20;

/// Codes per segment of the table that reads a code back.
const SEGMENT: usize = 4096;

/// Segments of the table: room for every value decoding may add in a cluster of up to
/// 16 processes (each process's own values, and those read back from the others).
const SEGMENTS: usize = 16 * MAX_VALUES / SEGMENT;

/// A dimension value: a code of this process's dictionary. Reads (`Deref`), orders,
/// compares and hashes as its text; serializes as its text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dim(NonZeroU32);

/// Why [`Dim::within_limit`] did not intern a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictionaryFull;

struct Dictionary {
    /// What [`Dim::within_limit`] may add up to: values, and their bytes.
    max_values: usize,
    max_bytes: usize,
    /// Each value's code; taken only to add a value (threads look values up in their own
    /// cache first).
    codes: Mutex<std::collections::HashMap<&'static str, Dim, foldhash::fast::FixedState>>,
    /// Bytes of all values in `codes`.
    bytes: AtomicUsize,
    /// Code `c` reads back from `segments[(c - 1) / SEGMENT][(c - 1) % SEGMENT]`.
    segments: [OnceLock<Box<[OnceLock<&'static str>]>>; SEGMENTS],
}

static DICTIONARY: Dictionary = Dictionary::new(MAX_VALUES, MAX_BYTES);

impl Dictionary {
    const fn new(max_values: usize, max_bytes: usize) -> Dictionary {
        Dictionary {
            max_values,
            max_bytes,
            codes: Mutex::new(std::collections::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0))),
            bytes: AtomicUsize::new(0),
            segments: [const { OnceLock::new() }; SEGMENTS],
        }
    }
}

thread_local! {
    /// Whether values read back on this thread now must be known already
    /// ([`known_only`]).
    static KNOWN_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };

    /// This thread's copy of the codes it has looked up: decoding interns several values
    /// per record, and the shared map's lock is taken only for a value new to the thread.
    static CACHE: std::cell::RefCell<foldhash::HashMap<&'static str, Dim>> = std::cell::RefCell::default();
}

impl Dictionary {
    fn slot(&self, index: usize) -> &OnceLock<&'static str> {
        let segment = self.segments[index / SEGMENT].get_or_init(|| (0..SEGMENT).map(|_| OnceLock::new()).collect());
        &segment[index % SEGMENT]
    }

    fn value(&self, dim: Dim) -> &'static str {
        let index = dim.0.get() as usize - 1;
        let segment = self.segments[index / SEGMENT].get().expect("a code's segment exists");
        segment[index % SEGMENT].get().expect("a code's value is set before the code is given")
    }

    /// The code of `value`, adding it if `limited` allows (always if not limited).
    fn code(&self, value: &str, limited: bool) -> Result<Dim, DictionaryFull> {
        let mut codes = self.codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(dim) = codes.get(value) {
            return Ok(*dim);
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        if limited && (codes.len() >= self.max_values || bytes + value.len() > self.max_bytes) {
            return Err(DictionaryFull);
        }
        let index = codes.len();
        if index >= SEGMENTS * SEGMENT {
            return Err(DictionaryFull);
        }
        let text: &'static str = Box::leak(value.into());
        self.slot(index).set(text).expect("a code is given once");
        let dim = Dim(NonZeroU32::new(u32::try_from(index + 1).expect("codes fit in 32 bits")).expect("codes start at 1"));
        codes.insert(text, dim);
        self.bytes.store(bytes + value.len(), Ordering::Relaxed);
        Ok(dim)
    }
}

impl Dim {
    /// The code of `value`, added to the dictionary unless it is full.
    pub fn within_limit(value: &str) -> Result<Dim, DictionaryFull> {
        Dim::cached(value, true)
    }

    /// The code of `value`, added to the dictionary whatever it holds: for values another
    /// process has already accepted, and for the views' own fixed values.
    pub fn new(value: &str) -> Dim {
        Dim::cached(value, false).expect("an unlimited dictionary has room up to its table's size")
    }

    /// The code of `value` if this process's dictionary holds it (nothing is added): for
    /// values asked for, such as a lookup's key, which no row may hold.
    pub fn existing(value: &str) -> Option<Dim> {
        if let Some(dim) = CACHE.with(|cache| cache.borrow().get(value).copied()) {
            return Some(dim);
        }
        DICTIONARY.codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(value).copied()
    }

    fn cached(value: &str, limited: bool) -> Result<Dim, DictionaryFull> {
        CACHE.with(|cache| {
            if let Some(dim) = cache.borrow().get(value) {
                return Ok(*dim);
            }
            let dim = DICTIONARY.code(value, limited)?;
            cache.borrow_mut().insert(dim.as_str(), dim);
            Ok(dim)
        })
    }

    /// The value.
    pub fn as_str(self) -> &'static str {
        DICTIONARY.value(self)
    }

    /// The code itself: equal values have equal codes within one process (for hash maps
    /// that never leave it).
    pub fn code(self) -> u32 {
        self.0.get()
    }

    /// How many values this process's dictionary holds, and their bytes.
    pub fn dictionary_size() -> (usize, usize) {
        let codes = DICTIONARY.codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (codes.len(), DICTIONARY.bytes.load(Ordering::Relaxed))
    }
}

impl std::ops::Deref for Dim {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Dim {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Dim {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Dim {
    fn from(value: &str) -> Dim {
        Dim::new(value)
    }
}

impl From<String> for Dim {
    fn from(value: String) -> Dim {
        Dim::new(&value)
    }
}

impl PartialOrd for Dim {
    fn partial_cmp(&self, other: &Dim) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dim {
    /// As the values: equal codes are equal values, and only different ones are read.
    fn cmp(&self, other: &Dim) -> std::cmp::Ordering {
        if self.0 == other.0 {
            std::cmp::Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl std::hash::Hash for Dim {
    /// As the value, so that a hash (and so a worker chosen by it) is the same in every
    /// process.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl std::fmt::Debug for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Dim {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Dim {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Dim {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Dim {
    /// Interned whatever the dictionary holds: a value read back was accepted where it
    /// was decoded. Inside [`known_only`], a value the process does not hold is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dim, D::Error> {
        let value: std::borrow::Cow<'de, str> = Deserialize::deserialize(deserializer)?;
        if KNOWN_ONLY.with(std::cell::Cell::get) {
            return Dim::existing(&value).ok_or_else(|| serde::de::Error::custom(format!("{value:?} is not a dimension value this process holds")));
        }
        Ok(Dim::new(&value))
    }
}

/// Runs `read` with values read back ([`Dim`]'s `Deserialize`) taken only if this process
/// already holds them: for what a client hands back, such as a page token's cursor,
/// whose values came from this process's rows (the dictionary never forgets one), so
/// that a made-up token cannot grow the dictionary.
pub fn known_only<R>(read: impl FnOnce() -> R) -> R {
    let before = KNOWN_ONLY.with(|k| k.replace(true));
    let result = read();
    KNOWN_ONLY.with(|k| k.set(before));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_order_and_hash_as_their_values() {
        let (b, a, c) = (Dim::new("dict-test-b"), Dim::new("dict-test-a"), Dim::new("dict-test-c"));
        assert_eq!(Dim::new("dict-test-b"), b);
        assert_eq!(&*a, "dict-test-a");
        assert_ne!(a, b);
        let mut sorted = vec![c, b, a];
        sorted.sort();
        assert_eq!(sorted, vec![a, b, c]);
        let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v(&mut h);
            std::hash::Hasher::finish(&h)
        };
        use std::hash::Hash;
        assert_eq!(hash(&|h| b.hash(h)), hash(&|h| "dict-test-b".hash(h)));
        // Equal from every thread, whichever interns first.
        let from_threads: Vec<Dim> = (0..4).map(|_| std::thread::spawn(|| Dim::new("dict-test-threads"))).map(|h| h.join().unwrap()).collect();
        assert!(from_threads.iter().all(|d| *d == from_threads[0] && d.as_str() == "dict-test-threads"));
    }

    #[test]
    fn decoding_adds_values_up_to_the_limit_and_reading_back_always() {
        let dictionary = Box::new(Dictionary::new(2, 10));
        let a = dictionary.code("aaaa", true).unwrap();
        let b = dictionary.code("bbbb", true).unwrap();
        assert_eq!(dictionary.code("cc", true), Err(DictionaryFull), "two values are the limit");
        assert_eq!(dictionary.code("aaaa", true), Ok(a), "a known value is found when full");
        let c = dictionary.code("cc", false).unwrap();
        assert_eq!([dictionary.value(a), dictionary.value(b), dictionary.value(c)], ["aaaa", "bbbb", "cc"]);
        let bytes = Box::new(Dictionary::new(10, 10));
        bytes.code("123456", true).unwrap();
        assert_eq!(bytes.code("12345", true), Err(DictionaryFull), "ten bytes are the limit");
        assert!(bytes.code("1234", true).is_ok());
    }

    #[test]
    fn rows_travel_as_their_text() {
        let dim = Dim::new("dict-test-json");
        let json = serde_json::to_string(&Some(dim)).unwrap();
        assert_eq!(json, r#""dict-test-json""#);
        let back: Option<Dim> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Some(dim));
        assert_eq!(std::mem::size_of::<Option<Dim>>(), 4);
        assert!(known_only(|| serde_json::from_str::<Dim>(r#""dict-test-made-up""#)).is_err(), "an unknown value is refused");
        assert_eq!(known_only(|| serde_json::from_str::<Dim>(&json).unwrap()), dim, "a known one is read");
        assert_eq!(Dim::existing("dict-test-made-up"), None, "the refused value was not added");
    }
}
