//! A per-run cookie jar: `Set-Cookie` from one step is sent by the steps after it, as a browser
//! would, scoped by host, `Domain` and `Path`.

/// One stored cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cookie {
    name: String,
    value: String,
    /// Host the cookie was set by, or the `Domain` attribute (then subdomains match too).
    domain: String,
    host_only: bool,
    path: String,
}

/// Cookies of one probe run.
#[derive(Debug, Clone, Default)]
pub struct CookieJar {
    cookies: Vec<Cookie>,
}

impl CookieJar {
    /// Stores the cookies of a response from `url`; `Max-Age=0` or an empty value removes one.
    pub fn store(
        &mut self,
        url: &url::Url,
        set_cookie_values: impl IntoIterator<Item = impl AsRef<str>>,
    ) {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        for header in set_cookie_values {
            let mut parts = header.as_ref().split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            let mut cookie = Cookie {
                name,
                value,
                domain: host.clone(),
                host_only: true,
                path: default_path(url),
            };
            let mut expired = false;
            for attr in parts {
                let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
                match key.trim().to_ascii_lowercase().as_str() {
                    "domain" => {
                        let d = val.trim().trim_start_matches('.').to_ascii_lowercase();
                        if !d.is_empty() && (host == d || host.ends_with(&format!(".{d}"))) {
                            cookie.domain = d;
                            cookie.host_only = false;
                        }
                    }
                    "path" if val.trim().starts_with('/') => cookie.path = val.trim().to_string(),
                    "max-age" => expired = val.trim().parse::<i64>().is_ok_and(|n| n <= 0),
                    _ => {}
                }
            }
            self.cookies.retain(|c| {
                !(c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path)
            });
            if !expired && !cookie.value.is_empty() {
                self.cookies.push(cookie);
            }
        }
    }

    /// The `Cookie` header value for a request to `url`, if any cookie applies.
    pub fn header_for(&self, url: &url::Url) -> Option<String> {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let path = url.path();
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| {
                let domain_ok = if c.host_only {
                    c.domain == host
                } else {
                    host == c.domain || host.ends_with(&format!(".{}", c.domain))
                };
                domain_ok && path_matches(path, &c.path)
            })
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }
}

fn default_path(url: &url::Url) -> String {
    let path = url.path();
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path[..i].to_string(),
    }
}

fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("valid url")
    }

    #[test]
    fn cookies_are_sent_back_to_the_same_host_and_path() {
        let mut jar = CookieJar::default();
        jar.store(
            &url("http://127.0.0.1:8080/api/auth/login"),
            ["session=abc; Path=/; HttpOnly", "pref=1"],
        );
        assert_eq!(
            jar.header_for(&url("http://127.0.0.1:8080/cart"))
                .as_deref(),
            Some("session=abc")
        );
        assert_eq!(
            jar.header_for(&url("http://127.0.0.1:8080/api/auth/x"))
                .as_deref(),
            Some("session=abc; pref=1")
        );
        assert_eq!(jar.header_for(&url("http://localhost:8080/cart")), None);
    }

    #[test]
    fn domain_cookies_match_subdomains_and_max_age_zero_deletes() {
        let mut jar = CookieJar::default();
        jar.store(&url("https://api.shop.test/"), ["s=1; Domain=shop.test"]);
        assert_eq!(
            jar.header_for(&url("https://www.shop.test/")).as_deref(),
            Some("s=1")
        );
        jar.store(
            &url("https://api.shop.test/"),
            ["s=; Domain=shop.test; Max-Age=0"],
        );
        assert_eq!(jar.header_for(&url("https://www.shop.test/")), None);
    }
}
