//! Page tokens: where a paged `Query` resumes.
//!
//! A token is an encoded [`PageToken`]: the time every page reads at, a digest of the
//! request it belongs to, and one [`ThreadCursor`] per worker thread of the cluster in
//! global thread order (process by process). Clients treat it as opaque bytes; the
//! coordinator checks it against the request and the cluster's shape before use.

use prost::Message;

use crate::internal::v1::{PageToken, ThreadCursor};
use crate::v1::QueryRequest;

/// Why a page token cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token at all.
    #[error("the page token is not one this server made")]
    Garbled,
    /// Made for a request with another view or selection.
    #[error("the page token belongs to a request with another view, key, range or filters")]
    OtherRequest,
    /// Made for a cluster of another shape.
    #[error("the page token was made for a cluster of {0} worker threads; this one has {1}")]
    OtherShape(usize, usize),
}

/// A stable digest of what a request selects (view, key, range, filters): the parts a
/// page token must be used with unchanged.
pub fn request_digest(q: &QueryRequest) -> u64 {
    use std::hash::Hasher;
    let mut selection = QueryRequest { view: q.view.clone(), key: q.key.clone(), range: q.range.clone(), filters: q.filters.clone(), ..Default::default() };
    selection.page_token.clear();
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0x7469_6465, 0x6d61_726b);
    hasher.write(&selection.encode_to_vec());
    hasher.finish()
}

/// The token of the page after one that stopped at `cursors`, or `None` if every thread
/// is done.
pub fn next_token(q: &QueryRequest, as_of: u64, cursors: Vec<ThreadCursor>) -> Option<Vec<u8>> {
    cursors.iter().any(|c| !c.done).then(|| PageToken { as_of, request: request_digest(q), cursors }.encode_to_vec())
}

/// Reads a request's page token for a cluster of `threads` worker threads.
pub fn read_token(q: &QueryRequest, threads: usize) -> Result<PageToken, TokenError> {
    let token = PageToken::decode(q.page_token.as_slice()).map_err(|_| TokenError::Garbled)?;
    if token.request != request_digest(q) {
        return Err(TokenError::OtherRequest);
    }
    if token.cursors.len() != threads {
        return Err(TokenError::OtherShape(token.cursors.len(), threads));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value;

    #[test]
    fn tokens_belong_to_their_request_and_shape() {
        let q = QueryRequest { view: "sessions".into(), limit: 0, ..Default::default() };
        let cursors = vec![ThreadCursor { done: true, position: Vec::new() }, ThreadCursor { done: false, position: vec![1, 2] }];
        assert!(next_token(&q, 7, vec![ThreadCursor { done: true, position: Vec::new() }]).is_none(), "all done: no next page");
        let token = next_token(&q, 7, cursors.clone()).expect("one thread is not done");
        let again = QueryRequest { page_token: token.clone(), as_of: Some(99), ..q.clone() };
        let read = read_token(&again, 2).expect("the same request");
        assert_eq!((read.as_of, read.cursors), (7, cursors));
        assert_eq!(read_token(&again, 3).unwrap_err(), TokenError::OtherShape(2, 3));
        let other = QueryRequest { key: vec![value::string("u1")], page_token: token, ..q.clone() };
        assert_eq!(read_token(&other, 2).unwrap_err(), TokenError::OtherRequest);
        let garbled = QueryRequest { page_token: vec![0xff; 5], ..q };
        assert_eq!(read_token(&garbled, 2).unwrap_err(), TokenError::Garbled);
    }
}
