//! The fault table: which misbehaviour to inject on which route. Shared between the admin API,
//! the programmatic [`Faults`] handle and the injecting middleware (`inject`).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

/// One route's fault. Every effect is optional; several may be combined, and they apply in
/// this order: latency, hang, reset, status, then (after the handler) malformed JSON and the
/// console error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// The request path this applies to: exact, or a prefix when it ends in `*` (`/api/*`).
    pub route: String,
    /// Added latency before the handler runs.
    pub latency_ms: u64,
    /// Extra latency, uniform in `0..=latency_jitter_ms`, on top of `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Answer this status with `{"error":"injected fault"}` instead of running the handler.
    pub status: Option<u16>,
    /// Probability (0.0–1.0) that `status` is injected on a given request.
    pub error_rate: f64,
    /// Replace the handler's body with truncated, unparseable JSON (status 200).
    pub malformed_json: bool,
    /// Never answer; the connection stays open until the client gives up.
    pub hang: bool,
    /// Abort the TCP connection with an RST and no response.
    pub reset: bool,
    /// Inject a `console.error` call into HTML pages.
    pub console_error: bool,
}

impl Default for Fault {
    fn default() -> Fault {
        Fault {
            route: String::new(),
            latency_ms: 0,
            latency_jitter_ms: 0,
            status: None,
            error_rate: 1.0,
            malformed_json: false,
            hang: false,
            reset: false,
            console_error: false,
        }
    }
}

impl Fault {
    /// A fault on `route` with no effects yet; fill them in with struct update syntax:
    /// `Fault { status: Some(500), ..Fault::new("/api/products") }`.
    pub fn new(route: impl Into<String>) -> Fault {
        Fault {
            route: route.into(),
            ..Fault::default()
        }
    }

    /// Whether this fault's route covers the request path `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self.route.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.route,
        }
    }

    /// Checks the fields the admin API accepts; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !self.route.starts_with('/') {
            return Err(format!("route must start with '/', got {:?}", self.route));
        }
        if let Some(status) = self.status
            && !(100..=599).contains(&status)
        {
            return Err(format!("status must be between 100 and 599, got {status}"));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be between 0.0 and 1.0, got {}",
                self.error_rate
            ));
        }
        Ok(())
    }
}

/// The runtime-switchable fault table; clones share the same table.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    by_route: Arc<RwLock<BTreeMap<String, Fault>>>,
}

impl Faults {
    /// Sets the fault for `fault.route`, replacing any previous one for that route.
    pub fn set(&self, fault: Fault) {
        self.write().insert(fault.route.clone(), fault);
    }

    /// Removes the fault for exactly `route`; returns whether there was one.
    pub fn remove(&self, route: &str) -> bool {
        self.write().remove(route).is_some()
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.write().clear();
    }

    /// Every fault, ordered by route.
    pub fn list(&self) -> Vec<Fault> {
        self.read().values().cloned().collect()
    }

    /// The fault that applies to a request path: an exact route wins over prefixes, and a
    /// longer prefix over a shorter one.
    pub fn for_path(&self, path: &str) -> Option<Fault> {
        self.read()
            .values()
            .filter(|f| f.matches(path))
            .max_by_key(|f| (!f.route.ends_with('*'), f.route.len()))
            .cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Fault>> {
        // Nothing panics while holding the lock, so a poisoned table is still consistent.
        self.by_route.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Fault>> {
        self.by_route
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_route_beats_longest_prefix_beats_shorter_prefix() {
        let faults = Faults::default();
        faults.set(Fault {
            status: Some(500),
            ..Fault::new("/api/*")
        });
        faults.set(Fault {
            status: Some(502),
            ..Fault::new("/api/products*")
        });
        faults.set(Fault {
            status: Some(503),
            ..Fault::new("/api/products")
        });
        let status = |path: &str| faults.for_path(path).and_then(|f| f.status);
        assert_eq!(status("/api/products"), Some(503));
        assert_eq!(status("/api/products/1"), Some(502));
        assert_eq!(status("/api/health"), Some(500));
        assert_eq!(status("/"), None);
    }

    #[test]
    fn set_replaces_and_remove_clears_one_route() {
        let faults = Faults::default();
        faults.set(Fault {
            latency_ms: 10,
            ..Fault::new("/a")
        });
        faults.set(Fault {
            latency_ms: 20,
            ..Fault::new("/a")
        });
        faults.set(Fault::new("/b"));
        assert_eq!(faults.list().len(), 2);
        assert_eq!(faults.for_path("/a").map(|f| f.latency_ms), Some(20));
        assert!(faults.remove("/a"));
        assert!(!faults.remove("/a"));
        faults.clear();
        assert!(faults.list().is_empty());
    }

    #[test]
    fn admin_json_fills_defaults_and_rejects_unknown_fields() {
        let fault: Fault = serde_json::from_str(r#"{"route":"/x","status":500}"#).expect("valid");
        assert_eq!(fault.error_rate, 1.0);
        assert!(fault.validate().is_ok());
        assert!(serde_json::from_str::<Fault>(r#"{"route":"/x","stauts":500}"#).is_err());
        assert!(
            Fault {
                status: Some(1000),
                ..Fault::new("/x")
            }
            .validate()
            .is_err()
        );
        assert!(Fault::new("x").validate().is_err());
    }
}
