//! Shared-secret authentication of gRPC calls: the public API's bearer tokens and the
//! internal port's coordinator secret use the same mechanism.
//!
//! A client attaches `authorization: Bearer <token>` to every call ([`BearerToken`]); a
//! server checks it against its accepted tokens ([`TokenCheck`]). The check compares
//! SHA-256 digests in constant time and looks at every accepted token, so neither the
//! timing nor the length of a wrong guess tells anything about a right one. A missing or
//! wrong token gets `UNAUTHENTICATED`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key the token travels in.
pub const HEADER: &str = "authorization";

/// A client interceptor that attaches a bearer token to every call (none: calls go
/// unchanged).
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// Attaches `token`, if given. Fails if the token is not printable ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}").parse().map(|v| BearerToken(Some(v))).map_err(|_| "a token must be printable ASCII".to_owned()),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A server interceptor that admits a call only with one of the accepted tokens. With no
/// accepted tokens it admits every call (authentication off).
#[derive(Clone, Debug, Default)]
pub struct TokenCheck {
    digests: Vec<[u8; 32]>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenCheck {
    /// Accepts these tokens (surrounding whitespace and empty entries are ignored).
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        TokenCheck { digests: tokens.into_iter().map(str::trim).filter(|t| !t.is_empty()).map(|t| digest(t.as_bytes())).collect() }
    }

    /// Whether any token is required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `token` is accepted; the time taken depends only on the number of accepted
    /// tokens.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented = digest(token);
        let mut found = subtle::Choice::from(0);
        for d in &self.digests {
            found |= d.ct_eq(&presented);
        }
        bool::from(found)
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            return Ok(request);
        }
        let Some(value) = request.metadata().get(HEADER) else {
            return Err(Status::unauthenticated("this server needs `authorization: Bearer <token>`"));
        };
        let token = bearer_token(value.as_bytes()).unwrap_or(b"");
        if self.accepts(token) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the bearer token is not accepted"))
        }
    }
}

/// The token of an `authorization` value `<scheme> 1*SP <token>` whose scheme is
/// `Bearer` in any case (RFC 7235 makes the scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii_start())
}

/// Reads tokens from a file (one per line; `#` starts a comment line) and from a
/// comma-separated list (an environment variable, typically).
pub fn load_tokens(file: Option<&std::path::Path>, list: Option<&str>) -> std::io::Result<TokenCheck> {
    let mut tokens: Vec<String> = list.map(|l| l.split(',').map(str::to_owned).collect()).unwrap_or_default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)?;
        tokens.extend(text.lines().filter(|l| !l.trim_start().starts_with('#')).map(str::to_owned));
    }
    Ok(TokenCheck::new(tokens.iter().map(String::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert(HEADER, h.parse().expect("ascii"));
        }
        check.call(request).map(drop).map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_checked() {
        let mut check = TokenCheck::new(["alpha", " beta ", ""]);
        assert!(check.enabled());
        assert_eq!(call(&mut check, Some("Bearer alpha")), Ok(()));
        assert_eq!(call(&mut check, Some("Bearer beta")), Ok(()));
        assert_eq!(call(&mut check, Some("bearer alpha")), Ok(()), "the scheme is case-insensitive");
        assert_eq!(call(&mut check, Some("BEARER  alpha")), Ok(()));
        assert_eq!(call(&mut check, Some("Bearer alpha ")), Err(tonic::Code::Unauthenticated), "the token is taken as it is");
        assert_eq!(call(&mut check, Some("Basic alpha")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("Bearer alph")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("alpha")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("Bearer ")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, None), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn no_tokens_means_open() {
        let mut check = TokenCheck::new([]);
        assert!(!check.enabled());
        assert_eq!(call(&mut check, None), Ok(()));
    }

    #[test]
    fn a_client_token_passes_the_check() {
        let mut client = BearerToken::new(Some("s3cret")).expect("ascii");
        let request = client.call(Request::new(())).expect("the client never refuses");
        assert!(TokenCheck::new(["s3cret"]).call(request).is_ok());
        assert!(BearerToken::new(Some("new\nline")).is_err());
    }

    #[test]
    fn tokens_load_from_a_file_and_a_list() {
        let dir = std::env::temp_dir().join(format!("tidemark-tokens-{}", std::process::id()));
        std::fs::write(&dir, "# operators\none\n\ntwo\n").expect("a temp file");
        let check = load_tokens(Some(&dir), Some("three,")).expect("readable");
        std::fs::remove_file(&dir).ok();
        assert!(check.accepts(b"one") && check.accepts(b"two") && check.accepts(b"three"));
        assert!(!check.accepts(b"# operators") && !check.accepts(b""));
    }
}
