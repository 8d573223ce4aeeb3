//! Fault injection: the faults a test injects ([`Fault`]: an error status or a delay, for some
//! verb, resource, subresource or name, for the next N requests or until cleared) and how a
//! request consumes them.

use std::time::Duration;

/// The verbs a [`Fault`] can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST (create, eviction).
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

/// What an injected fault does to a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer with this error status instead of handling the request.
    Error {
        /// HTTP code, e.g. 500 or 503.
        code: u16,
        /// Status reason, e.g. `InternalError`.
        reason: String,
        /// Status message.
        message: String,
    },
    /// Handle the request after this delay.
    Delay(Duration),
}

/// A fault injected into the server by a test. `None` fields match anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The verb to match.
    pub verb: Option<Verb>,
    /// The resource plural to match (e.g. `nodeupdates`).
    pub resource: Option<String>,
    /// The subresource to match (e.g. `status`, `eviction`).
    pub subresource: Option<String>,
    /// The object name to match.
    pub name: Option<String>,
    /// How many requests it applies to (None: until cleared).
    pub times: Option<u32>,
    /// What it does.
    pub action: FaultAction,
}

impl Fault {
    /// A fault answering every request with `code` (e.g. 500) until cleared.
    pub fn error(code: u16, message: &str) -> Self {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self {
            verb: None,
            resource: None,
            subresource: None,
            name: None,
            times: None,
            action: FaultAction::Error {
                code,
                reason: reason.into(),
                message: message.into(),
            },
        }
    }

    /// A fault delaying every request by `delay` until cleared.
    pub fn delay(delay: Duration) -> Self {
        Self {
            action: FaultAction::Delay(delay),
            ..Self::error(500, "")
        }
    }

    /// Restricts the fault to one verb.
    pub fn on(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Restricts the fault to one resource plural.
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.into());
        self
    }

    /// Restricts the fault to one subresource.
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(sub.into());
        self
    }

    /// Restricts the fault to one object name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Applies the fault to the next `n` matching requests only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, verb: Verb, plural: &str, sub: Option<&str>, name: Option<&str>) -> bool {
        self.verb.is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == plural)
            && self.subresource.as_deref().is_none_or(|s| Some(s) == sub)
            && self.name.as_deref().is_none_or(|n| Some(n) == name)
            && self.times != Some(0)
    }
}

/// The injected faults, in injection order.
#[derive(Debug, Default)]
pub(super) struct Faults {
    active: Vec<Fault>,
}

impl Faults {
    /// Adds a fault; it applies until cleared or used up.
    pub(super) fn inject(&mut self, fault: Fault) {
        self.active.push(fault);
    }

    /// Removes every fault.
    pub(super) fn clear(&mut self) {
        self.active.clear();
    }

    /// Consumes one use of every fault matching a request and returns their actions in injection
    /// order; faults used up are dropped. (The server sleeps through the delays and answers with
    /// the first error, so a fault listed after an error is used up without taking effect.)
    pub(super) fn take(
        &mut self,
        verb: Verb,
        plural: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> Vec<FaultAction> {
        let mut actions = Vec::new();
        for f in self.active.iter_mut() {
            if f.matches(verb, plural, sub, name) {
                if let Some(t) = f.times.as_mut() {
                    *t -= 1;
                }
                actions.push(f.action.clone());
            }
        }
        self.active.retain(|f| f.times != Some(0));
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(faults: &mut Faults, verb: Verb, plural: &str, sub: Option<&str>) -> usize {
        faults.take(verb, plural, sub, Some("a")).len()
    }

    #[test]
    fn a_fault_fires_n_times_then_stops() {
        let mut faults = Faults::default();
        faults.inject(Fault::error(503, "busy").on(Verb::Patch).times(2));
        assert_eq!(take(&mut faults, Verb::Get, "nodes", None), 0);
        assert_eq!(take(&mut faults, Verb::Patch, "nodes", None), 1);
        assert_eq!(take(&mut faults, Verb::Patch, "pods", None), 1);
        assert_eq!(take(&mut faults, Verb::Patch, "nodes", None), 0);
        assert!(faults.active.is_empty(), "a used-up fault is dropped");
    }

    #[test]
    fn an_unlimited_fault_lasts_until_cleared() {
        let mut faults = Faults::default();
        faults.inject(Fault::delay(Duration::from_millis(5)));
        for _ in 0..3 {
            assert_eq!(
                faults.take(Verb::List, "nodes", None, None),
                [FaultAction::Delay(Duration::from_millis(5))]
            );
        }
        faults.clear();
        assert_eq!(take(&mut faults, Verb::List, "nodes", None), 0);
    }

    #[test]
    fn every_restriction_must_match() {
        let fault = Fault::error(500, "x")
            .on(Verb::Create)
            .resource("pods")
            .subresource("eviction")
            .named("a");
        assert!(fault.matches(Verb::Create, "pods", Some("eviction"), Some("a")));
        assert!(!fault.matches(Verb::Update, "pods", Some("eviction"), Some("a")));
        assert!(!fault.matches(Verb::Create, "nodes", Some("eviction"), Some("a")));
        assert!(!fault.matches(Verb::Create, "pods", None, Some("a")));
        assert!(!fault.matches(Verb::Create, "pods", Some("eviction"), Some("b")));
        assert!(!fault.matches(Verb::Create, "pods", Some("eviction"), None));
        assert!(Fault::error(500, "x").matches(Verb::Watch, "leases", Some("status"), None));
        assert!(
            !Fault::error(500, "x")
                .times(0)
                .matches(Verb::Get, "pods", None, None)
        );
    }

    #[test]
    fn all_matching_faults_are_used_in_injection_order() {
        let mut faults = Faults::default();
        faults.inject(Fault::error(500, "first").times(1));
        faults.inject(Fault::delay(Duration::from_secs(1)).times(1));
        faults.inject(Fault::error(409, "second").on(Verb::Get));
        let actions = faults.take(Verb::Patch, "nodes", None, None);
        assert_eq!(
            actions,
            [
                FaultAction::Error {
                    code: 500,
                    reason: "InternalError".into(),
                    message: "first".into()
                },
                FaultAction::Delay(Duration::from_secs(1)),
            ]
        );
        assert_eq!(faults.active.len(), 1);
    }

    #[test]
    fn error_reasons_follow_the_code() {
        let reason = |code| match Fault::error(code, "").action {
            FaultAction::Error { reason, .. } => reason,
            FaultAction::Delay(_) => unreachable!(),
        };
        assert_eq!(reason(409), "Conflict");
        assert_eq!(reason(429), "TooManyRequests");
        assert_eq!(reason(503), "ServiceUnavailable");
        assert_eq!(reason(504), "Timeout");
        assert_eq!(reason(500), "InternalError");
        assert_eq!(reason(418), "InternalError");
    }
}
