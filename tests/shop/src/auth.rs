//! Who is asking: session tokens from an `Authorization: Bearer` header or the `session`
//! cookie, and the cookie strings the shop sets and clears.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};

use crate::store::{Store, User};

/// The cookie that carries the session token.
const SESSION_COOKIE: &str = "session";

/// The token from an `Authorization: Bearer` header, else from the session cookie.
pub(crate) fn request_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    bearer.or_else(|| cookie_token(headers))
}

/// The token from the session cookie only (what browsers send to pages).
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The signed-in user behind a request, if any.
pub(crate) fn current_user(store: &Store, headers: &HeaderMap) -> Option<User> {
    request_token(headers).and_then(|token| store.user_for_token(token))
}

/// `Set-Cookie` value that opens a session.
pub(crate) fn session_cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly")
}

/// `Set-Cookie` value that removes the session cookie.
pub(crate) fn expired_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_wins_over_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("theme=dark; session=abc"));
        assert_eq!(request_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(request_token(&headers), Some("xyz"));
        assert_eq!(cookie_token(&headers), Some("abc"));
    }
}
